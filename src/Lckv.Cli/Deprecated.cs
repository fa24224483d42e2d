using System.CommandLine;

namespace Lckv.Cli;

/// <summary>Old spellings of options, kept for one release: they still work, with a warning on stderr.</summary>
public static class Deprecated
{
    /// <summary>A hidden option under the old spelling, for <see cref="Value{T}"/>.</summary>
    public static Option<T> Alias<T>(string oldName, string canonical)
        => new(oldName) { Hidden = true, Description = $"deprecated: use {canonical}" };

    /// <summary>The canonical option's value, else the old spelling's with a warning; both given is an error.</summary>
    public static T? Value<T>(ParseResult p, Option<T> canonical, Option<T> old, string command, TextWriter stderr)
    {
        bool hasOld = p.GetResult(old) is { Implicit: false };
        if (!hasOld) return p.GetValue(canonical);
        if (p.GetResult(canonical) is { Implicit: false })
            throw new LckvException($"give {canonical.Name} only ({old.Name} is its old spelling on {command})");
        stderr.WriteLine($"warning: {old.Name} is deprecated on {command}; use {canonical.Name}");
        return p.GetValue(old);
    }
}
