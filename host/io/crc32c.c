// crc32c.c: see crc32c.h. One 256-entry table, built on first use (the
// checkpoint code is single-threaded), one byte per step: a few hundred MB/s,
// far faster than the disk a checkpoint goes to.
#include "io/crc32c.h"

static uint32_t table[256];
static int table_ready;

static void crc32c_init_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[i] = c;
    }
    table_ready = 1;
}

uint32_t crc32c_update(uint32_t crc, const void *data, size_t n) {
    if (!table_ready) crc32c_init_table();
    const unsigned char *p = data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}
