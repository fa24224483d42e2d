using System.Buffers.Binary;
using System.Text;
using Lckv.Numerics;

namespace Lckv.Formats;

/// <summary>
/// One tensor to write into a GGUF file: its name, type and row-major shape ([out, in] for a matrix; the file lists
/// the dims innermost first), and a function that fills its bytes. Fill is called once, in file order, with a buffer of
/// exactly the tensor's byte length, so a tensor is produced (converted, permuted, quantized) only when it is written.
/// </summary>
public sealed record GgufTensorData(string Name, DType DType, long[] Shape, Action<Span<byte>> Fill)
{
    /// <summary>Bytes the tensor takes: whole rows of the last dim (whole blocks for a block-quantized type).</summary>
    public long ByteLength => (long)GgmlTypes.ByteLength(DType, [.. Shape.Reverse()]);
}

/// <summary>Writes GGUF version 3 files (the layout <see cref="GgufFile"/> reads).</summary>
public static class GgufWriter
{
    public const uint Version = 3;

    /// <summary>
    /// Writes the metadata (in the order given) and the tensors (in the order given, each at an offset aligned to
    /// general.alignment, 32 when absent, and padded with zeros to the next one, as llama.cpp requires), atomically:
    /// to a temporary name in the same folder, flushed, then renamed over path.
    /// </summary>
    public static void Write(string path, IReadOnlyList<KeyValuePair<string, GgufValue>> metadata, IReadOnlyList<GgufTensorData> tensors)
    {
        int alignment = GgufFile.DefaultAlignment;
        var keys = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (key, value) in metadata)
        {
            if (!keys.Add(key)) throw new ArgumentException($"metadata key '{key}' given twice", nameof(metadata));
            if (key == "general.alignment")
            {
                if (value.Value is not uint a || a == 0 || (a & (a - 1)) != 0) throw new ArgumentException("general.alignment must be a u32 power of two", nameof(metadata));
                alignment = (int)a;
            }
        }
        var names = new HashSet<string>(StringComparer.Ordinal);
        var offsets = new long[tensors.Count];
        long offset = 0;
        for (int i = 0; i < tensors.Count; i++)
        {
            var t = tensors[i];
            if (t.Name.Length == 0 || !names.Add(t.Name)) throw new ArgumentException($"tensor name '{t.Name}' is empty or given twice", nameof(tensors));
            if (t.Shape.Length > GgufFile.MaxDims || t.Shape.Any(d => d < 0))
                throw new ArgumentException($"tensor '{t.Name}' shape [{string.Join(", ", t.Shape)}] is not 0 to {GgufFile.MaxDims} non-negative dims", nameof(tensors));
            if (DTypes.IsBlockQuantized(t.DType) && (t.Shape.Length == 0 || t.Shape[^1] % DTypes.BlockElements(t.DType) != 0))
                throw new ArgumentException($"tensor '{t.Name}': {DTypes.Name(t.DType)} rows hold whole blocks of {DTypes.BlockElements(t.DType)}", nameof(tensors));
            _ = GgmlTypes.FromDType(t.DType);
            offsets[i] = offset;
            offset = GgufFile.AlignUp(offset + t.ByteLength, alignment);
        }

        string full = System.IO.Path.GetFullPath(path);
        string tmp = full + ".tmp-" + System.Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(6));
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                var header = new BinaryWriter(fs, Encoding.UTF8, leaveOpen: true);
                header.Write(GgufFile.Magic);
                header.Write(Version);
                header.Write((ulong)tensors.Count);
                header.Write((ulong)metadata.Count);
                foreach (var (key, value) in metadata)
                {
                    WriteString(header, key);
                    header.Write((uint)value.Type);
                    WriteValue(header, value);
                }
                for (int i = 0; i < tensors.Count; i++)
                {
                    var t = tensors[i];
                    WriteString(header, t.Name);
                    header.Write((uint)t.Shape.Length);
                    for (int d = t.Shape.Length - 1; d >= 0; d--) header.Write((ulong)t.Shape[d]);
                    header.Write(GgmlTypes.FromDType(t.DType));
                    header.Write((ulong)offsets[i]);
                }
                header.Flush();
                Pad(fs, GgufFile.AlignUp(fs.Position, alignment) - fs.Position);
                long dataStart = fs.Position;
                for (int i = 0; i < tensors.Count; i++)
                {
                    var t = tensors[i];
                    Pad(fs, dataStart + offsets[i] - fs.Position);
                    long length = t.ByteLength;
                    if (length > Array.MaxLength) throw new LckvException($"tensor '{t.Name}' is {length} bytes; tensors over 2 GiB are not supported by the GGUF writer");
                    var buffer = new byte[length];
                    t.Fill(buffer);
                    fs.Write(buffer);
                }
                Pad(fs, GgufFile.AlignUp(fs.Position - dataStart, alignment) + dataStart - fs.Position);
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

    private static void Pad(Stream s, long n)
    {
        Span<byte> zeros = stackalloc byte[256];
        zeros.Clear();
        while (n > 0)
        {
            int k = (int)Math.Min(n, zeros.Length);
            s.Write(zeros[..k]);
            n -= k;
        }
    }

    private static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    private static void WriteValue(BinaryWriter w, GgufValue v)
    {
        if (!v.IsArray)
        {
            WriteScalar(w, v.Value);
            return;
        }
        var a = (Array)v.Value;
        w.Write((uint)v.ElementType);
        w.Write((ulong)a.Length);
        foreach (var item in a)
        {
            if (item is GgufValue inner)
            {
                if (!inner.IsArray) throw new ArgumentException("an array of arrays holds arrays only");
                WriteValue(w, inner);
            }
            else WriteScalar(w, item!);
        }
    }

    private static void WriteScalar(BinaryWriter w, object v)
    {
        switch (v)
        {
            case byte x: w.Write(x); break;
            case sbyte x: w.Write(x); break;
            case ushort x: w.Write(x); break;
            case short x: w.Write(x); break;
            case uint x: w.Write(x); break;
            case int x: w.Write(x); break;
            case float x: w.Write(x); break;
            case bool x: w.Write((byte)(x ? 1 : 0)); break;
            case string x: WriteString(w, x); break;
            case ulong x: w.Write(x); break;
            case long x: w.Write(x); break;
            case double x: w.Write(x); break;
            default: throw new ArgumentException($"a GGUF value cannot be a {v.GetType().Name}");
        }
    }

    /// <summary>Little-endian bytes of f32 values narrowed to F32, F16 or BF16 (round to nearest even).</summary>
    public static void EncodeFloat(ReadOnlySpan<float> values, DType dtype, Span<byte> destination)
    {
        switch (dtype)
        {
            case DType.F32:
                System.Runtime.InteropServices.MemoryMarshal.AsBytes(values).CopyTo(destination);
                break;
            case DType.F16:
                for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteUInt16LittleEndian(destination[(2 * i)..], DTypes.SingleToF16(values[i]));
                break;
            case DType.BF16:
                for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteUInt16LittleEndian(destination[(2 * i)..], DTypes.SingleToBF16(values[i]));
                break;
            default:
                throw new ArgumentException($"{DTypes.Name(dtype)} is not a float type", nameof(dtype));
        }
    }
}
