#!/usr/bin/perl
# cu2cpp.pl: turns a CUDA C++ source into plain C++ for glia's CPU emulator
# of the CUDA backend (docs/CUDA.md, "The emulator"). Two rewrites, nothing else:
#   kernel<<<grid, block[, smem[, stream]]>>>(args)
#       -> glia_emu::Launch(grid, block[, smem[, stream]]).of(kernel)(args)
#   extern __shared__ [__align__(n)] T name[];
#       -> T *name = reinterpret_cast<T *>(glia_emu::dynamic_smem());
# A launch must keep `kernel<<<...>>>(` on one line. A #line directive keeps
# compiler messages pointing at the .cu file.
use strict;
use warnings;
my $src = shift @ARGV;
open(my $in, '<', $src) or die "cu2cpp: $src: $!\n";
print "#line 1 \"$src\"\n";
while (my $line = <$in>) {
    $line =~ s{([A-Za-z_][\w:]*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\s*\(}{glia_emu::Launch($2).of($1)(}g;
    $line =~ s{extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?(\w+)\s+(\w+)\s*\[\s*\]\s*;}
              {$1 *$2 = reinterpret_cast<$1 *>(glia_emu::dynamic_smem());}g;
    print $line;
}
