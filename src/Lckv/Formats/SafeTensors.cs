using Lckv.Numerics;

namespace Lckv.Formats;

/// <summary>One tensor's entry in a safetensors header. Offset is absolute in the file (header included).</summary>
public sealed record TensorInfo(string Name, DType DType, long[] Shape, long Offset, long Length)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
    public string ShapeText => "[" + string.Join(", ", Shape) + "]";
}

/// <summary>
/// A memory-mapped safetensors file. Open validates the header: JSON well-formed, dtypes known, shape x dtype size
/// equal to each byte range, ranges inside the file and not overlapping. Errors are LckvException naming the file.
/// </summary>
public sealed class SafeTensorsFile : IDisposable
{
    public string Path { get; }
    public IReadOnlyDictionary<string, TensorInfo> Tensors { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    private SafeTensorsFile(string path) { Path = path; Tensors = new Dictionary<string, TensorInfo>(); Metadata = new Dictionary<string, string>(); }

    public static SafeTensorsFile Open(string path) => throw new NotImplementedException();

    /// <summary>Address of the first byte of the tensor's data in the mapping (valid until Dispose).</summary>
    public nint Pointer(string name) => throw new NotImplementedException();

    public void Dispose() { }
}

/// <summary>
/// The tensors of a checkpoint: a single model.safetensors, or shards listed by model.safetensors.index.json.
/// </summary>
public sealed class TensorSet : IDisposable
{
    /// <summary>Opens a directory (model.safetensors or model.safetensors.index.json in it) or a .safetensors file.</summary>
    public static TensorSet Open(string path) => throw new NotImplementedException();

    public IEnumerable<string> Names => throw new NotImplementedException();
    public bool Contains(string name) => throw new NotImplementedException();
    public TensorInfo Info(string name) => throw new NotImplementedException();
    public nint Pointer(string name) => throw new NotImplementedException();

    /// <summary>A 2-D float tensor as a matrix [rows, cols]; a 1-D one as [1, n]. Error if the dtype is not f32/f16/bf16.</summary>
    public WeightMatrix Matrix(string name) => throw new NotImplementedException();

    /// <summary>Total bytes of tensor data mapped.</summary>
    public long DataBytes => throw new NotImplementedException();

    public void Dispose() { }
}

/// <summary>One tensor to write: raw little-endian bytes in the given dtype.</summary>
public sealed record TensorData(string Name, DType DType, long[] Shape, ReadOnlyMemory<byte> Bytes);

public static class SafeTensorsWriter
{
    /// <summary>Writes a safetensors file atomically: to a temporary name in the same folder, flushed, then renamed.</summary>
    public static void Write(string path, IEnumerable<TensorData> tensors, IReadOnlyDictionary<string, string>? metadata = null)
        => throw new NotImplementedException();
}
