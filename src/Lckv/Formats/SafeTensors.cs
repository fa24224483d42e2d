using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;

using System.Text.Json;
using Lckv.Numerics;

namespace Lckv.Formats;

/// <summary>One tensor's entry in a safetensors header. Offset is absolute in the file (header included).</summary>
public sealed record TensorInfo(string Name, DType DType, long[] Shape, long Offset, long Length)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
    public string ShapeText => "[" + string.Join(", ", Shape) + "]";
}

/// <summary>A memory-mapped checkpoint file whose tensors a <see cref="TensorSet"/> serves: safetensors or GGUF.</summary>
public interface ITensorFile : IDisposable
{
    string Path { get; }
    /// <summary>Every tensor by name, shapes outermost dimension first (row-major: a matrix is [rows, cols]).</summary>
    IReadOnlyDictionary<string, TensorInfo> Tensors { get; }
    long FileLength { get; }
    /// <summary>Absolute file offset of the data section.</summary>
    long DataStart { get; }
    /// <summary>Address of the first byte of the tensor's data in the mapping (valid until Dispose).</summary>
    nint Pointer(string name);
    /// <summary>The tensor's raw bytes in the mapping (valid until Dispose; at most 2 GiB).</summary>
    ReadOnlySpan<byte> Bytes(string name);
}

/// <summary>
/// A memory-mapped safetensors file. Open validates the header: JSON well-formed, dtypes known, shape x dtype size
/// equal to each byte range, ranges inside the file and not overlapping. Errors are LckvException naming the file.
/// </summary>
/// <remarks>
/// Layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON (an object: name -> {dtype, shape,
/// data_offsets [begin, end)} plus an optional "__metadata__" string map), then the data section; data_offsets are
/// relative to the start of the data section.
/// </remarks>
public sealed unsafe class SafeTensorsFile : ITensorFile
{
    /// <summary>Largest header accepted (the reference implementation's limit).</summary>
    public const long MaxHeaderBytes = 100L * 1024 * 1024;

    public string Path { get; }
    public IReadOnlyDictionary<string, TensorInfo> Tensors { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Total file size in bytes.</summary>
    public long FileLength { get; }

    /// <summary>Absolute file offset of the data section (8 + header length).</summary>
    public long DataStart { get; }

    private MemoryMappedFile? _map;
    private MemoryMappedViewAccessor? _view;
    private byte* _base;
    private int _disposed;

    private SafeTensorsFile(string path, Dictionary<string, TensorInfo> tensors, Dictionary<string, string> metadata,
        long fileLength, long dataStart)
    {
        Path = path;
        Tensors = tensors;
        Metadata = metadata;
        FileLength = fileLength;
        DataStart = dataStart;
    }

    public static SafeTensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new LckvException($"{path}: file not found");
        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete, 1, FileOptions.None);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new LckvException($"{path}: cannot open: {e.Message}", e);
        }

        SafeTensorsFile? file = null;
        try
        {
            long fileLength = stream.Length;
            var (tensors, metadata, dataStart) = ReadHeader(path, stream, fileLength);
            file = new SafeTensorsFile(path, tensors, metadata, fileLength, dataStart);
            file.MapView(stream);
            return file;
        }
        catch
        {
            if (file is not null) file.Dispose();
            else stream.Dispose();
            throw;
        }
    }

    private void MapView(FileStream stream)
    {
        // leaveOpen: false, the mapping owns the stream from here on.
        _map = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
        _view = _map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        byte* p = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _base = p + _view.PointerOffset;
    }

    private static (Dictionary<string, TensorInfo>, Dictionary<string, string>, long) ReadHeader(string path, FileStream stream, long fileLength)
    {
        if (fileLength < 8)
            throw new LckvException($"{path}: too short to be a safetensors file ({fileLength} bytes, the header length alone takes 8)");

        Span<byte> lenBytes = stackalloc byte[8];
        stream.ReadExactly(lenBytes);
        ulong headerLen = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(lenBytes);
        if (headerLen > (ulong)(fileLength - 8))
            throw new LckvException($"{path}: header length {headerLen} exceeds the file ({fileLength} bytes); not a safetensors file or truncated");
        if (headerLen > MaxHeaderBytes)
            throw new LckvException($"{path}: header length {headerLen} is larger than the {MaxHeaderBytes}-byte limit");
        if (headerLen < 2)
            throw new LckvException($"{path}: header length {headerLen} is too small for a JSON object");

        var header = new byte[(int)headerLen];
        stream.ReadExactly(header);
        long dataStart = 8 + (long)headerLen;
        long dataLength = fileLength - dataStart;

        // the JSON reader leaves strings undecoded until they are read, so invalid UTF-8 is caught here, once
        if (!System.Text.Unicode.Utf8.IsValid(header))
            throw new LckvException($"{path}: header is not valid UTF-8 text (a safetensors header is JSON); not a safetensors file or corrupt");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw new LckvException($"{path}: malformed header JSON (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}): {JsonMessage(e)}", e);
        }

        var tensors = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new LckvException($"{path}: header is a JSON {Kind(root.ValueKind)}, expected an object");

            bool sawMetadata = false;
            foreach (var prop in root.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (sawMetadata) throw new LckvException($"{path}: header has '__metadata__' twice");
                    sawMetadata = true;
                    ReadMetadata(path, prop.Value, metadata);
                    continue;
                }
                if (tensors.ContainsKey(prop.Name))
                    throw new LckvException($"{path}: tensor '{Printable.Escape(prop.Name)}' appears twice in the header");
                tensors.Add(prop.Name, ReadEntry(path, prop.Name, prop.Value, dataStart));
            }
        }

        CheckRanges(path, tensors.Values, dataStart, dataLength, fileLength);
        return (tensors, metadata, dataStart);
    }

    private static void ReadMetadata(string path, JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind == JsonValueKind.Null) return;
        if (value.ValueKind != JsonValueKind.Object)
            throw new LckvException($"{path}: '__metadata__' is a JSON {Kind(value.ValueKind)}, expected an object of strings");
        foreach (var m in value.EnumerateObject())
        {
            if (m.Value.ValueKind != JsonValueKind.String)
                throw new LckvException($"{path}: '__metadata__' entry '{Printable.Escape(m.Name)}' is a JSON {Kind(m.Value.ValueKind)}, expected a string");
            metadata[m.Name] = m.Value.GetString()!;
        }
    }

    private static TensorInfo ReadEntry(string path, string name, JsonElement e, long dataStart)
    {
        string where = $"{path}: tensor '{Printable.Escape(name)}'";
        if (e.ValueKind != JsonValueKind.Object)
            throw new LckvException($"{where} is a JSON {Kind(e.ValueKind)}, expected an object with dtype, shape and data_offsets");

        if (!e.TryGetProperty("dtype", out var dt)) throw new LckvException($"{where} has no 'dtype'");
        if (dt.ValueKind != JsonValueKind.String) throw new LckvException($"{where}: 'dtype' is a JSON {Kind(dt.ValueKind)}, expected a string");
        string dtName = dt.GetString()!;
        if (!DTypes.TryParse(dtName, out var dtype))
            throw new LckvException($"{where} has unsupported dtype '{Printable.Escape(dtName)}' (expected F32, F16, BF16, F64, I64, I32, I16, I8, U8 or BOOL)");

        if (!e.TryGetProperty("shape", out var sh)) throw new LckvException($"{where} has no 'shape'");
        if (sh.ValueKind != JsonValueKind.Array) throw new LckvException($"{where}: 'shape' is a JSON {Kind(sh.ValueKind)}, expected an array of integers");
        var shape = new long[sh.GetArrayLength()];
        int k = 0;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long v) || v < 0)
                throw new LckvException($"{where}: shape {Truncate(sh.GetRawText())} must hold non-negative integers");
            shape[k++] = v;
        }

        if (!e.TryGetProperty("data_offsets", out var off)) throw new LckvException($"{where} has no 'data_offsets'");
        if (off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw new LckvException($"{where}: 'data_offsets' must be an array [begin, end], not {Truncate(off.GetRawText())}");
        long begin = OffsetValue(where, off[0], off), end = OffsetValue(where, off[1], off);
        if (end < begin)
            throw new LckvException($"{where}: data_offsets [{begin}, {end}] end before they begin");

        // shape x dtype size, without overflow
        Int128 expected = DTypes.SizeOf(dtype);
        foreach (long d in shape)
        {
            expected *= d;
            if (expected > long.MaxValue) throw new LckvException($"{where}: shape {FormatShape(shape)} is too large");
        }
        if (expected != end - begin)
            throw new LckvException($"{where}: shape {FormatShape(shape)} x {DTypes.Name(dtype)} needs {expected} bytes but data_offsets [{begin}, {end}] hold {end - begin}");

        if (begin > long.MaxValue - dataStart)
            throw new LckvException($"{where}: data_offsets [{begin}, {end}] are too large");
        return new TensorInfo(name, dtype, shape, dataStart + begin, end - begin);
    }

    private static long OffsetValue(string where, JsonElement v, JsonElement all)
    {
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long x) || x < 0)
            throw new LckvException($"{where}: data_offsets {Truncate(all.GetRawText())} must be non-negative integers");
        return x;
    }

    private static void CheckRanges(string path, IEnumerable<TensorInfo> tensors, long dataStart, long dataLength, long fileLength)
    {
        var sorted = tensors.OrderBy(t => t.Offset).ThenBy(t => t.Length).ToArray();
        TensorInfo? prev = null;
        foreach (var t in sorted)
        {
            long begin = t.Offset - dataStart, end = begin + t.Length;
            if (end > dataLength)
                throw new LckvException($"{path}: tensor '{Printable.Escape(t.Name)}' byte range [{begin}, {end}) exceeds the data section ({dataLength} bytes; file {fileLength} bytes): truncated or corrupt file");
            // zero-length tensors occupy nothing and cannot overlap
            if (t.Length == 0) continue;
            if (prev is not null && prev.Offset + prev.Length > t.Offset)
            {
                long pb = prev.Offset - dataStart;
                throw new LckvException($"{path}: tensors '{Printable.Escape(prev.Name)}' [{pb}, {pb + prev.Length}) and '{Printable.Escape(t.Name)}' [{begin}, {end}) overlap");
            }
            prev = t;
        }
    }

    /// <summary>The tensor's entry; LckvException naming the file if absent.</summary>
    public TensorInfo Info(string name)
        => Tensors.TryGetValue(name, out var info) ? info : throw new LckvException($"{Path}: no tensor '{Printable.Escape(name)}'");

    /// <summary>Address of the first byte of the tensor's data in the mapping (valid until Dispose).</summary>
    public nint Pointer(string name)
    {
        var info = Info(name);
        return (nint)(Base + info.Offset);
    }

    /// <summary>The tensor's raw bytes in the mapping (valid until Dispose; at most 2 GiB).</summary>
    public ReadOnlySpan<byte> Bytes(string name)
    {
        var info = Info(name);
        if (info.Length > int.MaxValue) throw new LckvException($"{Path}: tensor '{Printable.Escape(name)}' is larger than 2 GiB; use Pointer");
        return new ReadOnlySpan<byte>(Base + info.Offset, (int)info.Length);
    }

    private byte* Base
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed != 0, this);
            return _base;
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        if (_view is not null)
        {
            if (_base is not null) _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
        }
        _map?.Dispose();
        _base = null;
    }

    internal static string FormatShape(long[] shape) => "[" + string.Join(", ", shape) + "]";

    internal static string Kind(JsonValueKind k) => k switch
    {
        JsonValueKind.Object => "object",
        JsonValueKind.Array => "array",
        JsonValueKind.String => "string",
        JsonValueKind.Number => "number",
        JsonValueKind.True or JsonValueKind.False => "boolean",
        JsonValueKind.Null => "null",
        _ => "value",
    };

    /// <summary>A JSON reader's error made safe to print: the file text it quotes escaped and cut to 80 characters, the
    /// "LineNumber | BytePositionInLine" tail (the callers give the position in their own words) dropped.</summary>
    internal static string JsonMessage(JsonException e)
    {
        string m = e.Message;
        int tail = m.LastIndexOf(" LineNumber:", StringComparison.Ordinal);
        if (tail > 0) m = m[..tail].TrimEnd(' ', '|');
        m = m.Replace("System.", "", StringComparison.Ordinal); // "could not be converted to String", not System.String
        if (m.StartsWith('\''))
        {
            int end = m.LastIndexOf("' is ", StringComparison.Ordinal);
            if (end > 0) m = "'" + Printable.Escape(m[1..end]) + m[end..];
        }
        return Printable.Escape(m, 240);
    }

    internal static string FirstLine(string s)
    {
        int i = s.IndexOfAny(['\r', '\n']);
        return i < 0 ? s : s[..i];
    }

    private static string Truncate(string s) => Printable.Escape(s, 60);
}

/// <summary>
/// The tensors of a checkpoint: a single model.safetensors, shards listed by model.safetensors.index.json, or a GGUF
/// file (its tensors under their GGUF names, shapes row-major like every other format's).
/// </summary>
public sealed class TensorSet : IDisposable
{
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";

    private readonly List<ITensorFile> _files;
    private readonly Dictionary<string, ITensorFile> _owner;

    /// <summary>What was opened (a file or folder path), for error messages.</summary>
    public string Source { get; }

    /// <summary>The open safetensors files (one, or the shards); empty for a GGUF file.</summary>
    public IReadOnlyList<SafeTensorsFile> Files => [.. _files.OfType<SafeTensorsFile>()];

    /// <summary>The GGUF file when that is what was opened (its metadata describes the model), else null.</summary>
    public GgufFile? Gguf => _files is [GgufFile g] ? g : null;

    private TensorSet(string source, List<ITensorFile> files, Dictionary<string, ITensorFile> owner)
    {
        Source = source;
        _files = files;
        _owner = owner;
    }

    /// <summary>Opens a directory (model.safetensors or model.safetensors.index.json in it), a .safetensors file, or a
    /// GGUF file (by its .gguf name or its magic).</summary>
    public static TensorSet Open(string path)
    {
        if (Directory.Exists(path))
        {
            string index = System.IO.Path.Combine(path, IndexFileName);
            if (File.Exists(index)) return OpenIndex(index);
            string single = System.IO.Path.Combine(path, SingleFileName);
            if (File.Exists(single)) return FromFile(SafeTensorsFile.Open(single));
            throw new LckvException($"{path}: no {SingleFileName} or {IndexFileName} in this folder");
        }
        if (!File.Exists(path)) throw new LckvException($"{path}: no such file or folder");
        if (path.EndsWith(".json", StringComparison.OrdinalIgnoreCase)) return OpenIndex(path);
        if (GgufFile.IsGguf(path)) return FromFile(GgufFile.Open(path));
        return FromFile(SafeTensorsFile.Open(path));
    }

    /// <summary>A set over one open file, which it owns from here on.</summary>
    public static TensorSet FromFile(ITensorFile file)
    {
        var owner = new Dictionary<string, ITensorFile>(StringComparer.Ordinal);
        foreach (var name in file.Tensors.Keys) owner[name] = file;
        return new TensorSet(file.Path, [file], owner);
    }

    private static TensorSet OpenIndex(string indexPath)
    {
        var weightMap = ReadWeightMap(indexPath);
        string dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(indexPath))!;
        var files = new List<ITensorFile>();
        try
        {
            var byShard = new Dictionary<string, ITensorFile>(StringComparer.Ordinal);
            foreach (var (tensor, shard) in weightMap)
            {
                if (byShard.ContainsKey(shard)) continue;
                string shardPath = System.IO.Path.Combine(dir, shard);
                if (!File.Exists(shardPath))
                    throw new LckvException($"{indexPath}: shard '{Printable.Escape(shard)}' (holding tensor '{Printable.Escape(tensor)}') not found");
                var f = SafeTensorsFile.Open(shardPath);
                files.Add(f);
                byShard.Add(shard, f);
            }

            var owner = new Dictionary<string, ITensorFile>(StringComparer.Ordinal);
            foreach (var f in files)
            {
                foreach (var name in f.Tensors.Keys)
                {
                    if (owner.TryGetValue(name, out var other))
                        throw new LckvException($"{indexPath}: tensor '{Printable.Escape(name)}' is in two shards, '{System.IO.Path.GetFileName(other.Path)}' and '{System.IO.Path.GetFileName(f.Path)}'");
                    owner.Add(name, f);
                }
            }
            foreach (var (tensor, shard) in weightMap)
            {
                var f = byShard[shard];
                if (!f.Tensors.ContainsKey(tensor))
                {
                    string actual = owner.TryGetValue(tensor, out var o) ? $" (it is in '{System.IO.Path.GetFileName(o.Path)}')" : "";
                    throw new LckvException($"{indexPath}: weight_map puts tensor '{Printable.Escape(tensor)}' in shard '{Printable.Escape(shard)}', which does not contain it{actual}");
                }
            }
            return new TensorSet(indexPath, files, owner);
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    private static List<KeyValuePair<string, string>> ReadWeightMap(string indexPath)
    {
        byte[] bytes;
        try { bytes = File.ReadAllBytes(indexPath); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new LckvException($"{indexPath}: cannot read: {e.Message}", e);
        }
        JsonDocument doc;
        try { doc = JsonDocument.Parse(bytes); }
        catch (JsonException e)
        {
            throw new LckvException($"{indexPath}: malformed JSON (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}): {SafeTensorsFile.JsonMessage(e)}", e);
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new LckvException($"{indexPath}: expected a JSON object, found a {SafeTensorsFile.Kind(root.ValueKind)}");
            if (!root.TryGetProperty("weight_map", out var map))
                throw new LckvException($"{indexPath}: no 'weight_map'");
            if (map.ValueKind != JsonValueKind.Object)
                throw new LckvException($"{indexPath}: 'weight_map' is a JSON {SafeTensorsFile.Kind(map.ValueKind)}, expected an object");
            var result = new List<KeyValuePair<string, string>>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var p in map.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw new LckvException($"{indexPath}: weight_map entry '{Printable.Escape(p.Name)}' is a JSON {SafeTensorsFile.Kind(p.Value.ValueKind)}, expected a shard file name");
                if (!seen.Add(p.Name))
                    throw new LckvException($"{indexPath}: weight_map lists tensor '{Printable.Escape(p.Name)}' twice");
                string shard = p.Value.GetString()!;
                if (shard.Length == 0 || System.IO.Path.IsPathRooted(shard) || shard.Split('/', '\\').Contains(".."))
                    throw new LckvException($"{indexPath}: weight_map entry '{Printable.Escape(p.Name)}' names shard '{Printable.Escape(shard)}', which is not a file in this folder");
                result.Add(new(p.Name, shard));
            }
            if (result.Count == 0) throw new LckvException($"{indexPath}: 'weight_map' is empty");
            return result;
        }
    }

    public IEnumerable<string> Names => _owner.Keys;
    public bool Contains(string name) => _owner.ContainsKey(name);
    public TensorInfo Info(string name) => FileOf(name).Tensors[name];
    public nint Pointer(string name) => FileOf(name).Pointer(name);

    /// <summary>The file holding the tensor; LckvException if there is none.</summary>
    public ITensorFile FileOf(string name)
        => _owner.TryGetValue(name, out var f) ? f : throw new LckvException($"{Source}: no tensor '{Printable.Escape(name)}'");

    /// <summary>The tensor's raw bytes (valid until Dispose; at most 2 GiB).</summary>
    public ReadOnlySpan<byte> Bytes(string name) => FileOf(name).Bytes(name);

    /// <summary>A 2-D float tensor as a matrix [rows, cols]; a 1-D one as [1, n]. Error if the dtype is not f32/f16/bf16.</summary>
    public WeightMatrix Matrix(string name)
    {
        var file = FileOf(name);
        var info = file.Tensors[name];
        if (!DTypes.IsFloat(info.DType))
            throw new LckvException($"{file.Path}: tensor '{Printable.Escape(name)}' has dtype {DTypes.Name(info.DType)}; weights must be F32, F16 or BF16");
        long rows, cols;
        switch (info.Shape.Length)
        {
            case 1: rows = 1; cols = info.Shape[0]; break;
            case 2: rows = info.Shape[0]; cols = info.Shape[1]; break;
            default:
                throw new LckvException($"{file.Path}: tensor '{Printable.Escape(name)}' has shape {info.ShapeText}; a weight must be 1-D or 2-D");
        }
        if (rows > int.MaxValue || cols > int.MaxValue)
            throw new LckvException($"{file.Path}: tensor '{Printable.Escape(name)}' shape {info.ShapeText} is too large for a matrix");
        return new WeightMatrix(file.Pointer(name), info.DType, (int)rows, (int)cols);
    }

    /// <summary>The tensor widened to f32 (F32, F16, BF16, F64, or an integer dtype), copied into a new array.</summary>
    public float[] ReadSingles(string name)
    {
        var info = Info(name);
        var bytes = Bytes(name);
        var result = new float[info.ElementCount];
        switch (info.DType)
        {
            case DType.F32: MemoryMarshal.Cast<byte, float>(bytes).CopyTo(result); break;
            case DType.F16:
                { var s = MemoryMarshal.Cast<byte, ushort>(bytes); for (int i = 0; i < result.Length; i++) result[i] = DTypes.F16ToSingle(s[i]); }
                break;
            case DType.BF16:
                { var s = MemoryMarshal.Cast<byte, ushort>(bytes); for (int i = 0; i < result.Length; i++) result[i] = DTypes.BF16ToSingle(s[i]); }
                break;
            case DType.F64:
                { var s = MemoryMarshal.Cast<byte, double>(bytes); for (int i = 0; i < result.Length; i++) result[i] = (float)s[i]; }
                break;
            case DType.Q8_0 or DType.Q4_0:
                throw new LckvException($"{FileOf(name).Path}: tensor '{Printable.Escape(name)}' is {DTypes.Name(info.DType)}-quantized; it cannot be read as f32 values here");
            default:
                { var l = ReadInt64s(name); for (int i = 0; i < result.Length; i++) result[i] = l[i]; }
                break;
        }
        return result;
    }

    /// <summary>An integer (or bool) tensor widened to i64, copied into a new array.</summary>
    public long[] ReadInt64s(string name)
    {
        var info = Info(name);
        var bytes = Bytes(name);
        var result = new long[info.ElementCount];
        switch (info.DType)
        {
            case DType.I64: MemoryMarshal.Cast<byte, long>(bytes).CopyTo(result); break;
            case DType.I32: { var s = MemoryMarshal.Cast<byte, int>(bytes); for (int i = 0; i < result.Length; i++) result[i] = s[i]; } break;
            case DType.I16: { var s = MemoryMarshal.Cast<byte, short>(bytes); for (int i = 0; i < result.Length; i++) result[i] = s[i]; } break;
            case DType.I8: { var s = MemoryMarshal.Cast<byte, sbyte>(bytes); for (int i = 0; i < result.Length; i++) result[i] = s[i]; } break;
            case DType.U8 or DType.Bool: for (int i = 0; i < result.Length; i++) result[i] = bytes[i]; break;
            default:
                throw new LckvException($"{FileOf(name).Path}: tensor '{Printable.Escape(name)}' has dtype {DTypes.Name(info.DType)}, expected an integer dtype");
        }
        return result;
    }

    /// <summary>Total bytes of tensor data mapped.</summary>
    public long DataBytes => _owner.Values.Distinct().Sum(f => f.FileLength - f.DataStart);

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
    }
}

/// <summary>One tensor to write: raw little-endian bytes in the given dtype.</summary>
public sealed record TensorData(string Name, DType DType, long[] Shape, ReadOnlyMemory<byte> Bytes)
{
    /// <summary>An f32 tensor from values (copied).</summary>
    public static TensorData FromSingles(string name, long[] shape, ReadOnlySpan<float> values)
        => new(name, DType.F32, shape, MemoryMarshal.AsBytes(values).ToArray());

    /// <summary>An i64 tensor from values (copied).</summary>
    public static TensorData FromInt64s(string name, long[] shape, ReadOnlySpan<long> values)
        => new(name, DType.I64, shape, MemoryMarshal.AsBytes(values).ToArray());
}

public static class SafeTensorsWriter
{
    /// <summary>Writes a safetensors file atomically: to a temporary name in the same folder, flushed, then renamed.</summary>
    /// <remarks>Tensors are stored in ordinal name order; the header is padded with spaces so the data starts on an
    /// 8-byte boundary.</remarks>
    public static void Write(string path, IEnumerable<TensorData> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        for (int i = 0; i < list.Count; i++)
        {
            var t = list[i];
            if (t.Name == "__metadata__") throw new ArgumentException("a tensor cannot be named __metadata__", nameof(tensors));
            if (i > 0 && list[i - 1].Name == t.Name) throw new ArgumentException($"tensor '{t.Name}' given twice", nameof(tensors));
            long expected = DTypes.SizeOf(t.DType);
            foreach (long d in t.Shape)
            {
                if (d < 0) throw new ArgumentException($"tensor '{t.Name}' has a negative dimension", nameof(tensors));
                expected = checked(expected * d);
            }
            if (expected != t.Bytes.Length)
                throw new ArgumentException($"tensor '{t.Name}': shape {SafeTensorsFile.FormatShape(t.Shape)} x {DTypes.Name(t.DType)} needs {expected} bytes, got {t.Bytes.Length}", nameof(tensors));
        }

        byte[] header = BuildHeader(list, metadata);
        string full = System.IO.Path.GetFullPath(path);
        string tmp = full + ".tmp-" + System.Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(6));
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                Span<byte> len = stackalloc byte[8];
                System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
                fs.Write(len);
                fs.Write(header);
                foreach (var t in list) fs.Write(t.Bytes.Span);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    private static byte[] BuildHeader(List<TensorData> list, IReadOnlyDictionary<string, string>? metadata)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal)) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var t in list)
            {
                w.WriteStartObject(t.Name);
                w.WriteString("dtype", DTypes.Name(t.DType));
                w.WriteStartArray("shape");
                foreach (long d in t.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + t.Bytes.Length);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += t.Bytes.Length;
            }
            w.WriteEndObject();
        }
        int n = buffer.WrittenCount;
        int padded = (n + 7) / 8 * 8;
        var header = new byte[padded];
        buffer.WrittenSpan.CopyTo(header);
        header.AsSpan(n).Fill((byte)' ');
        return header;
    }
}
