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

    private readonly KvLayout _layout;
    private readonly int _totalBlocks;
    private readonly int[] _freeStack; // free block indices; the top is _freeStack[_freeCount - 1]
    private readonly int[] _refCounts; // 0 = free
    private int _freeCount;
    private byte* _basePointer;

    /// <param name="layout">the geometry of one block</param>
    /// <param name="budgetBytes">bytes the pool may take; it holds floor(budgetBytes / BlockBytes) blocks</param>
    public KvBlockPool(KvLayout layout, long budgetBytes)
    {
        if (layout.BlockSize <= 0 || layout.KvHeads <= 0 || layout.HeadDim <= 0)
            throw new LckvException($"invalid KV block layout: block size {layout.BlockSize}, {layout.KvHeads} KV heads, head dim {layout.HeadDim}");
        KvRows.Check(layout.DType, layout.HeadDim);
        long blockBytes = layout.BlockBytes;
        if (budgetBytes < blockBytes)
            throw new LckvException($"KV budget of {budgetBytes} bytes is smaller than one block ({blockBytes} bytes: " +
                $"{layout.BlockSize} tokens x {layout.KvHeads} heads x K,V rows of {layout.HeadBytes} bytes ({layout.HeadDim} values in {KvRows.Name(layout.DType)}))");
        long blocks = Math.Min(budgetBytes / blockBytes, Array.MaxLength);
        _layout = layout;
        _totalBlocks = (int)blocks;
        nuint bytes = (nuint)(blocks * blockBytes);
        try
        {
            // Not zeroed: pages the OS has not handed out cost nothing until a block is written.
            _basePointer = (byte*)NativeMemory.AlignedAlloc(bytes, Alignment);
        }
        catch (OutOfMemoryException e)
        {
            throw new LckvException($"could not reserve {bytes} bytes for the KV pool ({_totalBlocks} blocks); lower the KV budget", e);
        }
        _freeStack = new int[_totalBlocks];
        _refCounts = new int[_totalBlocks];
        // Block 0 on top: allocations walk the region from its start.
        for (int i = 0; i < _totalBlocks; i++) _freeStack[i] = _totalBlocks - 1 - i;
        _freeCount = _totalBlocks;
    }

    ~KvBlockPool() => Free();

    public KvLayout Layout => _layout;
    public nint Base => _basePointer != null ? (nint)_basePointer : throw new ObjectDisposedException(nameof(KvBlockPool));
    public int TotalBlocks => _totalBlocks;
    public int FreeBlocks => _freeCount;
    public int UsedBlocks => TotalBlocks - FreeBlocks;
    public long CapacityBytes => TotalBlocks * Layout.BlockBytes;
    public long BytesInUse => UsedBlocks * Layout.BlockBytes;

    /// <summary>Takes a free block with one reference; false when none is free. The block's bytes are not cleared.</summary>
    public bool TryAllocate(out int block)
    {
        if (_freeCount == 0)
        {
            block = -1;
            return false;
        }
        block = _freeStack[--_freeCount];
        _refCounts[block] = 1;
        return true;
    }

    /// <summary>Adds a reference to an allocated block.</summary>
    public void Retain(int block)
    {
        CheckIndex(block);
        if (_refCounts[block] == 0) throw new InvalidOperationException($"KV block {block} is free and cannot be retained");
        _refCounts[block]++;
    }

    /// <summary>Drops one reference; the block returns to the free list at zero. Double free throws.</summary>
    public void Release(int block)
    {
        CheckIndex(block);
        if (_refCounts[block] == 0) throw new InvalidOperationException($"KV block {block} is already free");
        if (--_refCounts[block] == 0) _freeStack[_freeCount++] = block;
    }

    public int RefCount(int block)
    {
        CheckIndex(block);
        return _refCounts[block];
    }

    public nint BlockPointer(int block)
    {
        CheckIndex(block);
        return Base + (nint)(block * _layout.BlockBytes);
    }

    public void Dispose()
    {
        Free();
        GC.SuppressFinalize(this);
    }

    void Free()
    {
        if (_basePointer == null) return;
        NativeMemory.AlignedFree(_basePointer);
        _basePointer = null;
    }

    void CheckIndex(int block)
    {
        if ((uint)block >= (uint)_totalBlocks)
            throw new ArgumentOutOfRangeException(nameof(block), block, $"the pool has {_totalBlocks} blocks");
    }
}
