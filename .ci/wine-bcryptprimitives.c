/* For .ci/smoke under Wine 8 (Debian 12's), which lacks bcryptprimitives.dll:
 * Rust's standard library on Windows takes its random numbers from
 * ProcessPrng there (Windows 10 and later have it). This stand-in answers
 * from RtlGenRandom (SystemFunction036), which Wine has. Only the Wine
 * prefix used by the smoke test gets it; the release binaries do not. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, n)) {
            return FALSE;
        }
        data += n;
        len -= n;
    }
    return TRUE;
}
