using Lckv.Numerics;

namespace Lckv.Cache;

/// <summary>
/// A preallocated region of fixed-size KV blocks (KvLayout: K then V, [BlockSize, KvHeads, HeadDim] each) with a byte
/// budget. O(1) free list, reference-counted blocks (for shared prefixes). Allocation can fail; the caller decides.
/// Memory is reserved once (native, 64-byte aligned); pages are touched only when written.
/// </summary>
public sealed class KvBlockPool : IDisposable
{
    public KvBlockPool(KvLayout layout, long budgetBytes) => throw new NotImplementedException();

    public KvLayout Layout => throw new NotImplementedException();
    public nint Base => throw new NotImplementedException();
    public int TotalBlocks => throw new NotImplementedException();
    public int FreeBlocks => throw new NotImplementedException();
    public int UsedBlocks => TotalBlocks - FreeBlocks;
    public long CapacityBytes => TotalBlocks * Layout.BlockBytes;
    public long BytesInUse => UsedBlocks * Layout.BlockBytes;

    public bool TryAllocate(out int block) => throw new NotImplementedException();
    public void Retain(int block) => throw new NotImplementedException();
    /// <summary>Drops one reference; the block returns to the free list at zero. Double free throws.</summary>
    public void Release(int block) => throw new NotImplementedException();
    public int RefCount(int block) => throw new NotImplementedException();
    public nint BlockPointer(int block) => throw new NotImplementedException();

    public void Dispose() { }
}
