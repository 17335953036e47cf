#!/usr/bin/perl
# cu2cpp.pl: turns a CUDA C++ source into plain C++ for glia's CPU emulator
# of the CUDA backend (docs/CUDA.md, "The emulator"). These rewrites, nothing else:
#   kernel<<<grid, block[, smem[, stream]]>>>(args)
#       -> glia_emu::Launch(grid, block[, smem[, stream]]).of(kernel)(args)
#   extern __shared__ [__align__(n)] T name[];
#       -> T *name = reinterpret_cast<T *>(glia_emu::dynamic_smem());
#   __shared__ [__align__(n)] T name[N]...;   (a static shared array)
#       -> the same, then its registration for the race check (emu.cpp):
#          `static const bool glia_emu_reg_name = glia_emu::shared_static(name, sizeof name, "name");`
#   __launch_bounds__(N[, ...]) on a kernel
#       -> removed, and the kernel's body starts with
#          `if (glia_emu::launch_bounds_exceeded(N)) return;` (the launch fails)
# A launch must keep `kernel<<<...>>>(` on one line, a bounded kernel's
# signature must end with `) {`, and a `__shared__` declaration of neither
# form above is an error (it would escape the race check). A #line
# directive keeps compiler messages pointing at the .cu file.
use strict;
use warnings;
my $src = shift @ARGV;
open(my $in, '<', $src) or die "cu2cpp: $src: $!\n";
print "#line 1 \"$src\"\n";
my $bound;  # the __launch_bounds__ of the kernel whose signature is being read
while (my $line = <$in>) {
    if ($line =~ s{__launch_bounds__\(\s*([^(),]+?)\s*(?:,[^()]*)?\)}{}) {
        $bound = $1;
    }
    if (defined $bound && $line =~ s#\)\s*\{\s*$#) { if (glia_emu::launch_bounds_exceeded($bound)) return;\n#) {
        undef $bound;
    }
    $line =~ s{([A-Za-z_][\w:]*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\s*\(}{glia_emu::Launch($2).of($1)(}g;
    $line =~ s{extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?(\w+)\s+(\w+)\s*\[\s*\]\s*;}
              {$1 *$2 = reinterpret_cast<$1 *>(glia_emu::dynamic_smem());}g;
    $line =~ s{(__shared__\s+(?:__align__\(\d+\)\s+)?[\w:]+\s+(\w+)\s*(?:\[[^\]]+\])+\s*;)}
              {$1 [[maybe_unused]] static const bool glia_emu_reg_$2 = glia_emu::shared_static($2, sizeof $2, "$2");}g;
    die "cu2cpp: $src:$.: a __shared__ declaration the emulator cannot check: $line"
        if $line =~ /\b__shared__\b/ && $line !~ /glia_emu::shared_static|^\s*\/\/|^\s*#/;
    print $line;
}
