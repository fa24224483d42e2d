using System.Runtime.InteropServices;

namespace Lckv.Numerics;

/// <summary>
/// Native allocations for large buffers that are read as streams (random preset weights, the bandwidth probe): on
/// Linux they are aligned to 2 MiB and advised as transparent huge pages (madvise MADV_HUGEPAGE), so a stream crosses
/// a page boundary every 2 MiB instead of every 4 KiB (fewer TLB misses; the hardware prefetchers stop at page
/// boundaries). Elsewhere, or below 2 MiB, a plain 64-byte aligned allocation. The advice is a hint: where the kernel
/// declines it (THP off) the memory is ordinary pages.
/// </summary>
internal static unsafe partial class HugePages
{
    public const long PageBytes = 2L << 20;
    private const int MadvHugePage = 14;
    private static bool _unavailable;

    /// <summary>At least `bytes` bytes (rounded up to whole huge pages when advised); free with NativeMemory.AlignedFree.</summary>
    public static void* Allocate(long bytes)
    {
        if (!OperatingSystem.IsLinux() || bytes < PageBytes || _unavailable)
            return NativeMemory.AlignedAlloc((nuint)Math.Max(bytes, 1), 64);
        long size = (bytes + PageBytes - 1) & ~(PageBytes - 1);
        void* p = NativeMemory.AlignedAlloc((nuint)size, (nuint)PageBytes);
        try
        {
            _ = madvise((nint)p, (nuint)size, MadvHugePage);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            _unavailable = true; // a libc without madvise: plain pages from now on
        }
        return p;
    }

    [LibraryImport("libc")]
    private static partial int madvise(nint address, nuint length, int advice);
}
