using System.Text;

namespace Lckv.Tests.Formats;

/// <summary>A fresh folder under the system temp folder, deleted on Dispose.</summary>
public sealed class TempDir : IDisposable
{
    public string Root { get; } = Directory.CreateTempSubdirectory("lckv-formats-").FullName;

    public string File(string name) => System.IO.Path.Combine(Root, name);

    public string Write(string name, byte[] bytes)
    {
        string p = File(name);
        System.IO.File.WriteAllBytes(p, bytes);
        return p;
    }

    public string WriteText(string name, string text)
    {
        string p = File(name);
        System.IO.File.WriteAllText(p, text);
        return p;
    }

    /// <summary>A raw safetensors file: the 8-byte length, the header text as is, then data bytes.</summary>
    public static byte[] RawSafeTensors(string header, int dataBytes, ulong? declaredLength = null)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var result = new byte[8 + h.Length + dataBytes];
        BitConverter.TryWriteBytes(result.AsSpan(0, 8), declaredLength ?? (ulong)h.Length);
        h.CopyTo(result, 8);
        for (int i = 0; i < dataBytes; i++) result[8 + h.Length + i] = (byte)i;
        return result;
    }

    public void Dispose()
    {
        try { Directory.Delete(Root, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
