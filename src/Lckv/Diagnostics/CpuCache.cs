using System.Globalization;

namespace Lckv.Diagnostics;

/// <summary>The processor's last-level cache size, where the OS says (Linux sysfs).</summary>
public static class CpuCache
{
    private static readonly Lazy<long?> _lastLevel = new(Read);

    /// <summary>Bytes of the highest cache level of cpu0; null where unknown.</summary>
    public static long? LastLevelBytes() => _lastLevel.Value;

    private static long? Read()
    {
        try
        {
            const string root = "/sys/devices/system/cpu/cpu0/cache";
            if (!Directory.Exists(root)) return null;
            (int Level, long Bytes)? best = null;
            foreach (var dir in Directory.EnumerateDirectories(root, "index*"))
            {
                if (!int.TryParse(File.ReadAllText(Path.Combine(dir, "level")).Trim(), out int level)) continue;
                if (Parse(File.ReadAllText(Path.Combine(dir, "size")).Trim()) is not long bytes) continue;
                if (best is null || level > best.Value.Level) best = (level, bytes);
            }
            return best?.Bytes;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    /// <summary>"32768K", "1M", "512" as bytes.</summary>
    internal static long? Parse(string s)
    {
        if (s.Length == 0) return null;
        long unit = char.ToUpperInvariant(s[^1]) switch { 'K' => 1024, 'M' => 1024 * 1024, 'G' => 1024L * 1024 * 1024, _ => 1 };
        string digits = unit == 1 ? s : s[..^1];
        return long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out long v) ? v * unit : null;
    }
}
