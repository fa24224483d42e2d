namespace Lckv.Training;

/// <summary>
/// Replacing a folder atomically: its new contents are written into a temporary sibling (<c>NAME.tmp-XXXX</c>), each
/// file flushed to disk, then swapped in by renames:
/// <code>
/// NAME exists:   delete NAME.old (stale), rename NAME -> NAME.old, rename NAME.tmp-XXXX -> NAME, delete NAME.old
/// NAME missing:  rename NAME.tmp-XXXX -> NAME, delete NAME.old
/// </code>
/// At every instant either NAME or NAME.old is a complete folder (NAME.old is only ever a former NAME, and it is
/// deleted only once NAME is back), so a reader that falls back to NAME.old (<see cref="Resolve"/>) always finds one.
/// A kill leaves at worst a NAME.tmp-XXXX folder, which the next write removes.
/// </summary>
public static class CheckpointFolder
{
    public const string OldSuffix = ".old";
    public const string TempInfix = ".tmp-";

    /// <summary>
    /// Writes a folder: write fills the (empty, temporary) folder it is given; then the folder replaces target.
    /// Left-over temporary siblings of target from killed writers are deleted first.
    /// </summary>
    /// <param name="onStage">Called with "swap" after the old folder has been moved aside and before the new one is
    /// moved in (a test hook for crash safety).</param>
    public static void Write(string target, Action<string> write, Action<string>? onStage = null)
    {
        ArgumentNullException.ThrowIfNull(write);
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(target));
        string parent = Path.GetDirectoryName(full) ?? throw new LckvException($"{target}: cannot write a root folder");
        string name = Path.GetFileName(full);
        try
        {
            Directory.CreateDirectory(parent);
            foreach (var stale in Directory.EnumerateDirectories(parent, name + TempInfix + "*")) TryDelete(stale);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new LckvException($"{parent}: cannot prepare the folder: {e.Message}", e);
        }

        string tmp = full + TempInfix + Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(4));
        Directory.CreateDirectory(tmp);
        try
        {
            write(tmp);
        }
        catch
        {
            TryDelete(tmp);
            throw;
        }
        Swap(tmp, full, onStage);
    }

    private static void Swap(string tmp, string full, Action<string>? onStage)
    {
        string old = full + OldSuffix;
        try
        {
            if (Directory.Exists(full))
            {
                if (Directory.Exists(old)) Directory.Delete(old, recursive: true);
                Directory.Move(full, old);
            }
            onStage?.Invoke("swap");
            Directory.Move(tmp, full);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new LckvException($"{full}: cannot move the new folder into place: {e.Message}", e);
        }
        TryDelete(old);
    }

    /// <summary>
    /// The folder to read: target when isComplete says it is complete, else target.old when that is, else null.
    /// </summary>
    public static string? Resolve(string target, Func<string, bool> isComplete)
    {
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(target));
        if (Directory.Exists(full) && isComplete(full)) return full;
        string old = full + OldSuffix;
        if (Directory.Exists(old) && isComplete(old)) return old;
        return null;
    }

    /// <summary>Writes a small file and flushes it to disk.</summary>
    public static void WriteDurable(string path, ReadOnlySpan<byte> bytes)
    {
        using var fs = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16);
        fs.Write(bytes);
        fs.Flush(flushToDisk: true);
    }

    private static void TryDelete(string dir)
    {
        try
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
