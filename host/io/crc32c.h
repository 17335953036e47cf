// crc32c.h: CRC-32C (Castagnoli), the checksum of every tensor in glia's
// checkpoint files.
//
// CRC-32C is what storage systems (iSCSI, ext4, Btrfs) use to catch bit rot
// and torn writes; it is written here, table-driven, rather than taken from a
// library, because it is thirty lines and glia's checkpoints must not depend
// on which zlib or CPU instruction set a machine has. Polynomial 0x82F63B78
// (reflected), initial value and final xor 0xFFFFFFFF: crc32c("123456789")
// is 0xE3069283.
#ifndef GLIA_CRC32C_H
#define GLIA_CRC32C_H

#include <stddef.h>
#include <stdint.h>

// Continues a CRC: crc32c_update(0, p, n) is the CRC of p[0..n), and
// crc32c_update(crc32c_update(0, a, na), b, nb) is the CRC of a then b.
uint32_t crc32c_update(uint32_t crc, const void *data, size_t n);
static inline uint32_t crc32c(const void *data, size_t n) { return crc32c_update(0, data, n); }

#endif
