"""Checks a macOS binary built here: a Mach-O executable for the CPU
given, that runs on macOS MIN or later and loads nothing but libSystem
(no framework: see macos_link in .ci/zigbuild-env).

    python3 .ci/macho.py BINARY x86_64|aarch64 MIN
"""

import struct
import sys

CPUS = {"x86_64": 0x01000007, "aarch64": 0x0100000C}
LC_LOAD_DYLIB, LC_LOAD_WEAK_DYLIB, LC_REEXPORT_DYLIB = 0xC, 0x80000018, 0x8000001F
LC_VERSION_MIN_MACOSX, LC_BUILD_VERSION = 0x24, 0x32


def version(v):
    return f"{v >> 16}.{(v >> 8) & 0xFF}"


def read(path):
    data = open(path, "rb").read()
    magic, cpu, _, filetype, ncmds = struct.unpack_from("<IiiII", data)
    if magic != 0xFEEDFACF or filetype != 2:
        sys.exit(f"macho: {path} is not a 64-bit Mach-O executable")
    minos, dylibs, off = None, [], 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, off)
        if cmd in (LC_LOAD_DYLIB, LC_LOAD_WEAK_DYLIB, LC_REEXPORT_DYLIB):
            (name,) = struct.unpack_from("<I", data, off + 8)
            dylibs.append(data[off + name : off + size].split(b"\0")[0].decode())
        elif cmd == LC_BUILD_VERSION:
            minos = version(struct.unpack_from("<I", data, off + 12)[0])
        elif cmd == LC_VERSION_MIN_MACOSX:
            minos = version(struct.unpack_from("<I", data, off + 8)[0])
        off += size
    return cpu, minos, dylibs


def main():
    path, cpu_name, want = sys.argv[1:4]
    cpu, minos, dylibs = read(path)
    if cpu != CPUS[cpu_name]:
        sys.exit(f"macho: {path} is not for {cpu_name}")
    if minos != want:
        sys.exit(f"macho: {path} needs macOS {minos}, not {want}")
    if dylibs != ["/usr/lib/libSystem.B.dylib"]:
        sys.exit(f"macho: {path} loads {dylibs}, not libSystem alone")
    print(f"macho: {path}: {cpu_name}, macOS {want} or later, loads libSystem only")


main()
