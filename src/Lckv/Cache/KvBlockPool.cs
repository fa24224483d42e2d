using System.Runtime.InteropServices;
using Lckv.Numerics;

namespace Lckv.Cache;

/// <summary>
/// A preallocated region of fixed-size KV blocks (KvLayout: K then V, [BlockSize, KvHeads, HeadDim] each) with a byte
/// budget. O(1) free list, reference-counted blocks (for shared prefixes). Allocation can fail; the caller decides.
/// Memory is reserved once (native, 64-byte aligned); pages are touched only when written.
/// Not thread-safe: the verbs (allocate, retain, release) belong to one thread; the bytes of distinct blocks may be
/// written concurrently.
/// </summary>
public sealed unsafe class KvBlockPool : IDisposable
{
    public const int Alignment = 64;

    readonly KvLayout layout;
    readonly int totalBlocks;
    readonly int[] freeStack; // free block indices; the top is freeStack[freeCount - 1]
    readonly int[] refCounts; // 0 = free
    int freeCount;
    byte* basePointer;

    /// <param name="layout">the geometry of one block</param>
    /// <param name="budgetBytes">bytes the pool may take; it holds floor(budgetBytes / BlockBytes) blocks</param>
    public KvBlockPool(KvLayout layout, long budgetBytes)
    {
        if (layout.BlockSize <= 0 || layout.KvHeads <= 0 || layout.HeadDim <= 0)
            throw new LckvException($"invalid KV block layout: block size {layout.BlockSize}, {layout.KvHeads} KV heads, head dim {layout.HeadDim}");
        if (!DTypes.IsFloat(layout.DType))
            throw new LckvException($"KV storage dtype {DTypes.Name(layout.DType)} is not supported (f32, f16 or bf16)");
        long blockBytes = layout.BlockBytes;
        if (budgetBytes < blockBytes)
            throw new LckvException($"KV budget of {budgetBytes} bytes is smaller than one block ({blockBytes} bytes: " +
                $"{layout.BlockSize} tokens x {layout.KvHeads} heads x {layout.HeadDim} dims x K,V in {DTypes.Name(layout.DType)})");
        long blocks = Math.Min(budgetBytes / blockBytes, Array.MaxLength);
        this.layout = layout;
        totalBlocks = (int)blocks;
        nuint bytes = (nuint)(blocks * blockBytes);
        try
        {
            // Not zeroed: pages the OS has not handed out cost nothing until a block is written.
            basePointer = (byte*)NativeMemory.AlignedAlloc(bytes, Alignment);
        }
        catch (OutOfMemoryException e)
        {
            throw new LckvException($"could not reserve {bytes} bytes for the KV pool ({totalBlocks} blocks); lower the KV budget", e);
        }
        freeStack = new int[totalBlocks];
        refCounts = new int[totalBlocks];
        // Block 0 on top: allocations walk the region from its start.
        for (int i = 0; i < totalBlocks; i++) freeStack[i] = totalBlocks - 1 - i;
        freeCount = totalBlocks;
    }

    ~KvBlockPool() => Free();

    public KvLayout Layout => layout;
    public nint Base => basePointer != null ? (nint)basePointer : throw new ObjectDisposedException(nameof(KvBlockPool));
    public int TotalBlocks => totalBlocks;
    public int FreeBlocks => freeCount;
    public int UsedBlocks => TotalBlocks - FreeBlocks;
    public long CapacityBytes => TotalBlocks * Layout.BlockBytes;
    public long BytesInUse => UsedBlocks * Layout.BlockBytes;

    /// <summary>Takes a free block with one reference; false when none is free. The block's bytes are not cleared.</summary>
    public bool TryAllocate(out int block)
    {
        if (freeCount == 0)
        {
            block = -1;
            return false;
        }
        block = freeStack[--freeCount];
        refCounts[block] = 1;
        return true;
    }

    /// <summary>Adds a reference to an allocated block.</summary>
    public void Retain(int block)
    {
        CheckIndex(block);
        if (refCounts[block] == 0) throw new InvalidOperationException($"KV block {block} is free and cannot be retained");
        refCounts[block]++;
    }

    /// <summary>Drops one reference; the block returns to the free list at zero. Double free throws.</summary>
    public void Release(int block)
    {
        CheckIndex(block);
        if (refCounts[block] == 0) throw new InvalidOperationException($"KV block {block} is already free");
        if (--refCounts[block] == 0) freeStack[freeCount++] = block;
    }

    public int RefCount(int block)
    {
        CheckIndex(block);
        return refCounts[block];
    }

    public nint BlockPointer(int block)
    {
        CheckIndex(block);
        return Base + (nint)(block * layout.BlockBytes);
    }

    public void Dispose()
    {
        Free();
        GC.SuppressFinalize(this);
    }

    void Free()
    {
        if (basePointer == null) return;
        NativeMemory.AlignedFree(basePointer);
        basePointer = null;
    }

    void CheckIndex(int block)
    {
        if ((uint)block >= (uint)totalBlocks)
            throw new ArgumentOutOfRangeException(nameof(block), block, $"the pool has {totalBlocks} blocks");
    }
}
