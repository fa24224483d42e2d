using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Text;
using Lckv.Numerics;

namespace Lckv.Formats;

/// <summary>The value types of GGUF metadata (the numbers are the file's).</summary>
public enum GgufType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9,
    UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>
/// One GGUF metadata value: a scalar (boxed byte, sbyte, ushort, short, uint, int, float, bool, string, ulong, long or
/// double) or an array (a typed .NET array of those; arrays of arrays hold GgufValue[]).
/// </summary>
public sealed class GgufValue
{
    public GgufType Type { get; }
    /// <summary>The element type of an array (the type itself for a scalar).</summary>
    public GgufType ElementType { get; }
    public object Value { get; }

    internal GgufValue(GgufType type, GgufType elementType, object value)
    {
        Type = type;
        ElementType = elementType;
        Value = value;
    }

    public static GgufValue String(string v) => new(GgufType.String, GgufType.String, v);
    public static GgufValue UInt32(uint v) => new(GgufType.UInt32, GgufType.UInt32, v);
    public static GgufValue Int32(int v) => new(GgufType.Int32, GgufType.Int32, v);
    public static GgufValue UInt64(ulong v) => new(GgufType.UInt64, GgufType.UInt64, v);
    public static GgufValue Float32(float v) => new(GgufType.Float32, GgufType.Float32, v);
    public static GgufValue Float64(double v) => new(GgufType.Float64, GgufType.Float64, v);
    public static GgufValue Bool(bool v) => new(GgufType.Bool, GgufType.Bool, v);
    public static GgufValue Array(string[] v) => new(GgufType.Array, GgufType.String, v);
    public static GgufValue Array(float[] v) => new(GgufType.Array, GgufType.Float32, v);
    public static GgufValue Array(int[] v) => new(GgufType.Array, GgufType.Int32, v);
    public static GgufValue Array(GgufValue[] v) => new(GgufType.Array, GgufType.Array, v);

    public bool IsArray => Type == GgufType.Array;

    /// <summary>Elements of an array (0 for a scalar).</summary>
    public int Count => Value is System.Array a ? a.Length : 0;

    /// <summary>An integer scalar (of any width) that fits a long.</summary>
    public bool TryGetInteger(out long value)
    {
        switch (Value)
        {
            case byte v: value = v; return true;
            case sbyte v: value = v; return true;
            case ushort v: value = v; return true;
            case short v: value = v; return true;
            case uint v: value = v; return true;
            case int v: value = v; return true;
            case long v: value = v; return true;
            case ulong v when v <= long.MaxValue: value = (long)v; return true;
            default: value = 0; return false;
        }
    }

    /// <summary>A float or integer scalar.</summary>
    public bool TryGetNumber(out double value)
    {
        switch (Value)
        {
            case float f: value = f; return true;
            case double d: value = d; return true;
            case ulong u: value = u; return true;
            default:
                bool ok = TryGetInteger(out long l);
                value = l;
                return ok;
        }
    }

    /// <summary>The typed array when this is an array of T (string[], float[], int[], ...), else null.</summary>
    public T[]? ArrayOf<T>() => Value as T[];

    /// <summary>"u32", "string", "array[f32]", ... as the format's tools print them.</summary>
    public string TypeName => IsArray ? $"array[{Name(ElementType)}]" : Name(Type);

    internal static string Name(GgufType t) => t switch
    {
        GgufType.UInt8 => "u8", GgufType.Int8 => "i8", GgufType.UInt16 => "u16", GgufType.Int16 => "i16",
        GgufType.UInt32 => "u32", GgufType.Int32 => "i32", GgufType.Float32 => "f32", GgufType.Bool => "bool",
        GgufType.String => "string", GgufType.Array => "array", GgufType.UInt64 => "u64", GgufType.Int64 => "i64",
        GgufType.Float64 => "f64", _ => $"type {(uint)t}",
    };

    /// <summary>A one-line rendering for people: strings quoted and escaped, long ones and long arrays cut short.</summary>
    public string Describe(int maxItems = 6, int maxChars = 60)
    {
        if (Value is System.Array a)
        {
            var items = new List<string>();
            for (int i = 0; i < Math.Min(a.Length, maxItems); i++) items.Add(Scalar(a.GetValue(i)!, maxChars));
            string more = a.Length > maxItems ? $", ... ({a.Length} items)" : "";
            return "[" + string.Join(", ", items) + more + "]";
        }
        return Scalar(Value, maxChars);
    }

    private static string Scalar(object v, int maxChars) => v switch
    {
        string s => "\"" + Printable.Escape(s, maxChars) + "\"",
        GgufValue g => g.Describe(3, maxChars),
        bool b => b ? "true" : "false",
        float f => f.ToString("R", System.Globalization.CultureInfo.InvariantCulture),
        double d => d.ToString("R", System.Globalization.CultureInfo.InvariantCulture),
        IFormattable f => f.ToString(null, System.Globalization.CultureInfo.InvariantCulture),
        _ => v.ToString() ?? "",
    };

    public override string ToString() => Describe();
}

/// <summary>One tensor as a GGUF file lists it: ne innermost dimension first, the GGML type id, offset in the data section.</summary>
public sealed record GgufTensor(string Name, uint GgmlType, DType DType, long[] Ne, long Offset, long Length);

/// <summary>GGML tensor type ids: the ones Lckv maps to a DType, and the names of the rest for error messages.</summary>
public static class GgmlTypes
{
    public const uint F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, BF16 = 30;

    private static readonly Dictionary<uint, string> _names = new()
    {
        [0] = "F32", [1] = "F16", [2] = "Q4_0", [3] = "Q4_1", [6] = "Q5_0", [7] = "Q5_1", [8] = "Q8_0", [9] = "Q8_1",
        [10] = "Q2_K", [11] = "Q3_K", [12] = "Q4_K", [13] = "Q5_K", [14] = "Q6_K", [15] = "Q8_K", [16] = "IQ2_XXS",
        [17] = "IQ2_XS", [18] = "IQ3_XXS", [19] = "IQ1_S", [20] = "IQ4_NL", [21] = "IQ3_S", [22] = "IQ2_S",
        [23] = "IQ4_XS", [24] = "I8", [25] = "I16", [26] = "I32", [27] = "I64", [28] = "F64", [29] = "IQ1_M",
        [30] = "BF16", [34] = "TQ1_0", [35] = "TQ2_0", [39] = "MXFP4",
    };

    /// <summary>"Q4_K", or "unknown type 77".</summary>
    public static string Name(uint id) => _names.TryGetValue(id, out var n) ? n : $"unknown type {id}";

    /// <summary>"GGML type Q4_K (12)", or "unknown GGML type 77".</summary>
    public static string Describe(uint id) => _names.TryGetValue(id, out var n) ? $"GGML type {n} ({id})" : $"unknown GGML type {id}";

    public static bool TryToDType(uint id, out DType dtype)
    {
        (bool ok, dtype) = id switch
        {
            F32 => (true, DType.F32), F16 => (true, DType.F16), BF16 => (true, DType.BF16), Q8_0 => (true, DType.Q8_0),
            Q4_0 => (true, DType.Q4_0), I8 => (true, DType.I8), I16 => (true, DType.I16), I32 => (true, DType.I32),
            I64 => (true, DType.I64), F64 => (true, DType.F64),
            _ => (false, default),
        };
        return ok;
    }

    /// <summary>The GGML id of a DType a GGUF file can hold.</summary>
    public static uint FromDType(DType t) => t switch
    {
        DType.F32 => F32, DType.F16 => F16, DType.BF16 => BF16, DType.Q8_0 => Q8_0, DType.Q4_0 => Q4_0,
        DType.I8 => I8, DType.I16 => I16, DType.I32 => I32, DType.I64 => I64, DType.F64 => F64,
        _ => throw new ArgumentException($"GGUF has no tensor type for {DTypes.Name(t)}", nameof(t)),
    };

    /// <summary>Bytes of a tensor of this type with dims ne (innermost first): whole rows of ne[0] elements.</summary>
    public static Int128 ByteLength(DType t, ReadOnlySpan<long> ne)
    {
        if (ne.Length == 0) return DTypes.BlockBytes(t); // a scalar: one element of a per-element type
        Int128 bytes = (Int128)(ne[0] / DTypes.BlockElements(t)) * DTypes.BlockBytes(t);
        for (int i = 1; i < ne.Length; i++) bytes *= ne[i];
        return bytes;
    }
}

/// <summary>
/// A memory-mapped GGUF file (versions 2 and 3): the metadata key/value table, the tensor infos and the tensor data.
/// Open validates everything before anything is used: counts and lengths inside the file, string lengths bounded,
/// known value and tensor types, the alignment a power of two, tensor offsets aligned, ranges inside the data section
/// and not overlapping, and every tensor's dims x type size equal to its byte range. Each violation is one
/// LckvException naming the file and the key or tensor.
/// </summary>
/// <remarks>
/// Layout (little-endian): "GGUF", u32 version, u64 tensor count, u64 key/value count; each key/value is a string key,
/// a u32 value type and the value (strings are a u64 byte length then UTF-8; arrays a u32 element type, a u64 count,
/// then the elements); each tensor info is a string name, u32 dim count, u64 dims innermost first, u32 GGML type, u64
/// offset from the data section; the data section starts at the next multiple of general.alignment (default 32).
/// Tensors keep their GGUF names; their shapes are row-major (ne reversed), so a [out, in] matrix has ne = [in, out].
/// </remarks>
public sealed unsafe class GgufFile : ITensorFile
{
    public const uint Magic = 0x46554747; // "GGUF" read as a little-endian u32
    public const int DefaultAlignment = 32;
    /// <summary>Longest string accepted (a key, a value, a tensor name).</summary>
    public const long MaxStringBytes = 256L << 20;
    /// <summary>Deepest nesting of arrays accepted.</summary>
    public const int MaxArrayDepth = 8;
    public const int MaxDims = 4;

    public string Path { get; }
    public uint Version { get; private set; }
    public int Alignment { get; private set; } = DefaultAlignment;
    public long FileLength { get; }
    public long DataStart { get; private set; }

    /// <summary>The metadata, by key.</summary>
    public IReadOnlyDictionary<string, GgufValue> Metadata { get; private set; } = new Dictionary<string, GgufValue>();
    /// <summary>The metadata keys in file order.</summary>
    public IReadOnlyList<string> Keys { get; private set; } = [];
    /// <summary>The tensors in file order, as the file lists them.</summary>
    public IReadOnlyList<GgufTensor> TensorList { get; private set; } = [];
    public IReadOnlyDictionary<string, TensorInfo> Tensors { get; private set; } = new Dictionary<string, TensorInfo>();

    private MemoryMappedFile? _map;
    private MemoryMappedViewAccessor? _view;
    private byte* _base;
    private int _disposed;

    private GgufFile(string path, long fileLength)
    {
        Path = path;
        FileLength = fileLength;
    }

    /// <summary>True when the file's first four bytes are "GGUF", or (when it cannot be read) its name ends in .gguf.</summary>
    public static bool IsGguf(string path)
    {
        try
        {
            using var s = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete, 1);
            Span<byte> b = stackalloc byte[4];
            if (s.Length < 4 || s.ReadAtLeast(b, 4, throwOnEndOfStream: false) < 4) return path.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase);
            return BinaryPrimitives.ReadUInt32LittleEndian(b) == Magic || path.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return path.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase);
        }
    }

    public static GgufFile Open(string path)
    {
        if (Directory.Exists(path)) throw new LckvException($"{path}: is a folder, expected a .gguf file");
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

        var mapped = new GgufFile(path, stream.Length);
        try
        {
            // the fixed header: magic, version, two counts
            if (mapped.FileLength < 24)
            {
                throw new LckvException($"{path}: too short to be a GGUF file ({mapped.FileLength} bytes; the header alone takes 24)");
            }
            mapped._map = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            mapped._view = mapped._map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            mapped._view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            mapped._base = p + mapped._view.PointerOffset;
            mapped.Parse();
            return mapped;
        }
        catch
        {
            if (mapped._map is null) stream.Dispose(); // once mapped, the mapping owns the stream
            mapped.Dispose();
            throw;
        }
    }

    private void Parse()
    {
        var r = new Reader(_base, FileLength, Path);
        uint magic = r.U32("the magic");
        if (magic != Magic)
            throw new LckvException($"{Path}: not a GGUF file (it starts with {Printable.Escape(Encoding.Latin1.GetString(_base, 4), 16)}, not \"GGUF\")");
        uint version = r.U32("the version");
        if (version != 0 && (version & 0xFFFF) == 0)
            throw new LckvException($"{Path}: GGUF version {version} looks byte-swapped: big-endian GGUF files are not supported");
        if (version == 1) throw new LckvException($"{Path}: GGUF version 1 (32-bit counts) is not supported; versions 2 and 3 are");
        if (version is not (2 or 3)) throw new LckvException($"{Path}: GGUF version {version} is not supported; versions 2 and 3 are");
        ulong tensorCount = r.U64("the tensor count"), kvCount = r.U64("the metadata count");
        // a key/value takes at least 13 bytes (key length, type, one byte of value), a tensor info at least 24
        if (kvCount > (ulong)r.Remaining / 13)
            throw new LckvException($"{Path}: header says {kvCount} metadata entries, more than the {FileLength}-byte file can hold");
        if (tensorCount > (ulong)r.Remaining / 24)
            throw new LckvException($"{Path}: header says {tensorCount} tensors, more than the {FileLength}-byte file can hold");

        var keys = new List<string>((int)Math.Min(kvCount, 4096)); // a count is only a claim until its entries are read
        var metadata = new Dictionary<string, GgufValue>(StringComparer.Ordinal);
        for (ulong i = 0; i < kvCount; i++)
        {
            string key = r.String($"the key of metadata entry {i}");
            string where = $"metadata key '{Printable.Escape(key)}'";
            if (metadata.ContainsKey(key)) throw new LckvException($"{Path}: {where} appears twice");
            uint type = r.U32($"the type of {where}");
            metadata.Add(key, ReadValue(ref r, type, where, 0));
            keys.Add(key);
        }

        int alignment = DefaultAlignment;
        if (metadata.TryGetValue("general.alignment", out var al))
        {
            if (al.Value is not uint a) throw new LckvException($"{Path}: general.alignment is a {al.TypeName}, expected a u32");
            if (a == 0 || (a & (a - 1)) != 0 || a > 1 << 30) throw new LckvException($"{Path}: general.alignment {a} is not a power of two");
            alignment = (int)a;
        }

        var list = new List<GgufTensor>((int)Math.Min(tensorCount, 4096));
        var names = new HashSet<string>(StringComparer.Ordinal);
        for (ulong i = 0; i < tensorCount; i++)
        {
            string name = r.String($"the name of tensor {i}");
            string where = $"tensor '{Printable.Escape(name)}'";
            if (name.Length == 0) throw new LckvException($"{Path}: tensor {i} has an empty name");
            if (!names.Add(name)) throw new LckvException($"{Path}: {where} appears twice");
            uint dims = r.U32($"the dimension count of {where}");
            if (dims > MaxDims) throw new LckvException($"{Path}: {where} has {dims} dimensions; GGUF tensors have at most {MaxDims}");
            var ne = new long[dims];
            for (int d = 0; d < dims; d++)
            {
                ulong v = r.U64($"the dimensions of {where}");
                if (v > long.MaxValue) throw new LckvException($"{Path}: {where} has dimension {v}, which is too large");
                ne[d] = (long)v;
            }
            uint ggml = r.U32($"the type of {where}");
            if (!GgmlTypes.TryToDType(ggml, out var dtype))
                throw new LckvException($"{Path}: {where} has {GgmlTypes.Describe(ggml)}, which Lckv does not read (F32, F16, BF16, Q8_0 and Q4_0 are supported)");
            ulong offset = r.U64($"the offset of {where}");
            if (offset > long.MaxValue) throw new LckvException($"{Path}: {where} has offset {offset}, which is too large");
            if (offset % (ulong)alignment != 0)
                throw new LckvException($"{Path}: {where} starts at offset {offset}, which is not a multiple of the alignment {alignment}");
            if (dims > 0 && DTypes.IsBlockQuantized(dtype) && ne[0] % DTypes.BlockElements(dtype) != 0)
                throw new LckvException($"{Path}: {where} is {DTypes.Name(dtype)} with rows of {ne[0]} elements, not whole blocks of {DTypes.BlockElements(dtype)}");
            if (dims == 0 && DTypes.IsBlockQuantized(dtype))
                throw new LckvException($"{Path}: {where} is a {DTypes.Name(dtype)} scalar; quantized tensors hold whole blocks");
            Int128 bytes = GgmlTypes.ByteLength(dtype, ne);
            if (bytes > long.MaxValue) throw new LckvException($"{Path}: {where} dims {FormatNe(ne)} are too large");
            list.Add(new GgufTensor(name, ggml, dtype, ne, (long)offset, (long)bytes));
        }

        long dataStart = AlignUp(r.Position, alignment);
        long dataLength = Math.Max(0, FileLength - dataStart);
        CheckRanges(list, dataLength);

        Version = version;
        Alignment = alignment;
        DataStart = dataStart;
        Keys = keys;
        Metadata = metadata;
        TensorList = list;
        var tensors = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
        foreach (var t in list)
            tensors.Add(t.Name, new TensorInfo(t.Name, t.DType, [.. t.Ne.Reverse()], dataStart + t.Offset, t.Length));
        Tensors = tensors;
    }

    private GgufValue ReadValue(ref Reader r, uint type, string where, int depth)
    {
        var t = (GgufType)type;
        switch (t)
        {
            case GgufType.UInt8: return new GgufValue(t, t, r.Bytes(1, where)[0]);
            case GgufType.Int8: return new GgufValue(t, t, (sbyte)r.Bytes(1, where)[0]);
            case GgufType.UInt16: return new GgufValue(t, t, BinaryPrimitives.ReadUInt16LittleEndian(r.Bytes(2, where)));
            case GgufType.Int16: return new GgufValue(t, t, BinaryPrimitives.ReadInt16LittleEndian(r.Bytes(2, where)));
            case GgufType.UInt32: return new GgufValue(t, t, r.U32(where));
            case GgufType.Int32: return new GgufValue(t, t, BinaryPrimitives.ReadInt32LittleEndian(r.Bytes(4, where)));
            case GgufType.Float32: return new GgufValue(t, t, BinaryPrimitives.ReadSingleLittleEndian(r.Bytes(4, where)));
            case GgufType.Bool: return new GgufValue(t, t, ReadBool(r.Bytes(1, where)[0], where));
            case GgufType.String: return new GgufValue(t, t, r.String(where));
            case GgufType.UInt64: return new GgufValue(t, t, r.U64(where));
            case GgufType.Int64: return new GgufValue(t, t, BinaryPrimitives.ReadInt64LittleEndian(r.Bytes(8, where)));
            case GgufType.Float64: return new GgufValue(t, t, BinaryPrimitives.ReadDoubleLittleEndian(r.Bytes(8, where)));
            case GgufType.Array:
                return ReadArray(ref r, where, depth);
            default:
                throw new LckvException($"{Path}: {where} has unknown value type {type}");
        }
    }

    private bool ReadBool(byte b, string where)
        => b switch { 0 => false, 1 => true, _ => throw new LckvException($"{Path}: {where} holds {b} where a bool (0 or 1) belongs") };

    private GgufValue ReadArray(ref Reader r, string where, int depth)
    {
        if (depth >= MaxArrayDepth) throw new LckvException($"{Path}: {where} nests arrays more than {MaxArrayDepth} deep");
        uint elementType = r.U32($"the element type of {where}");
        var et = (GgufType)elementType;
        ulong count = r.U64($"the length of {where}");
        int minBytes = et switch
        {
            GgufType.UInt8 or GgufType.Int8 or GgufType.Bool => 1,
            GgufType.UInt16 or GgufType.Int16 => 2,
            GgufType.UInt32 or GgufType.Int32 or GgufType.Float32 => 4,
            GgufType.UInt64 or GgufType.Int64 or GgufType.Float64 or GgufType.String => 8,
            GgufType.Array => 12,
            _ => throw new LckvException($"{Path}: {where} is an array of unknown value type {elementType}"),
        };
        if (count > (ulong)(r.Remaining / minBytes) || count > (ulong)System.Array.MaxLength)
            throw new LckvException($"{Path}: {where} says it holds {count} {GgufValue.Name(et)} values, more than the rest of the file ({r.Remaining} bytes) can hold");
        int n = (int)count;
        switch (et)
        {
            case GgufType.UInt8: return new GgufValue(GgufType.Array, et, r.Bytes(n, where).ToArray());
            case GgufType.Int8: return new GgufValue(GgufType.Array, et, Cast<sbyte>(r.Bytes(n, where)));
            case GgufType.Bool:
                {
                    var bytes = r.Bytes(n, where);
                    var a = new bool[n];
                    for (int i = 0; i < n; i++) a[i] = ReadBool(bytes[i], where);
                    return new GgufValue(GgufType.Array, et, a);
                }
            case GgufType.UInt16: return new GgufValue(GgufType.Array, et, Cast<ushort>(r.Bytes(2L * n, where)));
            case GgufType.Int16: return new GgufValue(GgufType.Array, et, Cast<short>(r.Bytes(2L * n, where)));
            case GgufType.UInt32: return new GgufValue(GgufType.Array, et, Cast<uint>(r.Bytes(4L * n, where)));
            case GgufType.Int32: return new GgufValue(GgufType.Array, et, Cast<int>(r.Bytes(4L * n, where)));
            case GgufType.Float32: return new GgufValue(GgufType.Array, et, Cast<float>(r.Bytes(4L * n, where)));
            case GgufType.UInt64: return new GgufValue(GgufType.Array, et, Cast<ulong>(r.Bytes(8L * n, where)));
            case GgufType.Int64: return new GgufValue(GgufType.Array, et, Cast<long>(r.Bytes(8L * n, where)));
            case GgufType.Float64: return new GgufValue(GgufType.Array, et, Cast<double>(r.Bytes(8L * n, where)));
            case GgufType.String:
                {
                    var a = new string[n];
                    for (int i = 0; i < n; i++) a[i] = r.String(where);
                    return new GgufValue(GgufType.Array, et, a);
                }
            default:
                {
                    var a = new GgufValue[n];
                    for (int i = 0; i < n; i++) a[i] = ReadArray(ref r, where, depth + 1);
                    return new GgufValue(GgufType.Array, et, a);
                }
        }
    }

    // the file is little-endian, like every machine .NET runs this on
    private static T[] Cast<T>(ReadOnlySpan<byte> bytes) where T : unmanaged
        => System.Runtime.InteropServices.MemoryMarshal.Cast<byte, T>(bytes).ToArray();

    private void CheckRanges(List<GgufTensor> list, long dataLength)
    {
        GgufTensor? prev = null;
        foreach (var t in list.OrderBy(t => t.Offset).ThenBy(t => t.Length))
        {
            if (t.Length > dataLength - t.Offset)
                throw new LckvException($"{Path}: tensor '{Printable.Escape(t.Name)}' byte range [{t.Offset}, {t.Offset + t.Length}) exceeds the data section ({dataLength} bytes; file {FileLength} bytes): truncated or corrupt file");
            if (t.Length == 0) continue;
            if (prev is not null && prev.Offset + prev.Length > t.Offset)
                throw new LckvException($"{Path}: tensors '{Printable.Escape(prev.Name)}' [{prev.Offset}, {prev.Offset + prev.Length}) and '{Printable.Escape(t.Name)}' [{t.Offset}, {t.Offset + t.Length}) overlap");
            prev = t;
        }
    }

    internal static long AlignUp(long x, long alignment) => (x + alignment - 1) / alignment * alignment;

    /// <summary>"[64, 512]": dims innermost first, as GGUF lists them.</summary>
    public static string FormatNe(IEnumerable<long> ne) => "[" + string.Join(", ", ne) + "]";

    /// <summary>The tensor's entry in file terms (ne, GGML type); LckvException if absent.</summary>
    public GgufTensor Tensor(string name)
        => TensorList.FirstOrDefault(t => t.Name == name) ?? throw new LckvException($"{Path}: no tensor '{Printable.Escape(name)}'");

    public nint Pointer(string name)
    {
        if (!Tensors.TryGetValue(name, out var info)) throw new LckvException($"{Path}: no tensor '{Printable.Escape(name)}'");
        return (nint)(Base + info.Offset);
    }

    public ReadOnlySpan<byte> Bytes(string name)
    {
        if (!Tensors.TryGetValue(name, out var info)) throw new LckvException($"{Path}: no tensor '{Printable.Escape(name)}'");
        if (info.Length > int.MaxValue) throw new LckvException($"{Path}: tensor '{Printable.Escape(name)}' is larger than 2 GiB; use Pointer");
        return new ReadOnlySpan<byte>(Base + info.Offset, (int)info.Length);
    }

    private byte* Base
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed != 0 || _base is null, this);
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

    /// <summary>Bounds-checked little-endian reads over the mapped header; running out is a one-line error.</summary>
    private ref struct Reader(byte* data, long length, string path)
    {
        public long Position { get; private set; }
        public readonly long Remaining => length - Position;

        public ReadOnlySpan<byte> Bytes(long n, string what)
        {
            if (n > Remaining)
                throw new LckvException($"{path}: truncated: {what} at byte {Position} needs {n} bytes, but the file ends at {length}");
            if (n > int.MaxValue) throw new LckvException($"{path}: {what} at byte {Position} is larger than 2 GiB");
            var span = new ReadOnlySpan<byte>(data + Position, (int)n);
            Position += n;
            return span;
        }

        public uint U32(string what) => BinaryPrimitives.ReadUInt32LittleEndian(Bytes(4, what));
        public ulong U64(string what) => BinaryPrimitives.ReadUInt64LittleEndian(Bytes(8, what));

        public string String(string what)
        {
            long at = Position;
            ulong n = U64(what);
            if (n > MaxStringBytes)
                throw new LckvException($"{path}: {what} at byte {at} is a string of {n} bytes, longer than the {MaxStringBytes}-byte limit");
            if (n > (ulong)Remaining)
                throw new LckvException($"{path}: truncated: {what} at byte {at} is a string of {n} bytes, but only {Remaining} remain in the file");
            return Encoding.UTF8.GetString(Bytes((long)n, what));
        }
    }
}
