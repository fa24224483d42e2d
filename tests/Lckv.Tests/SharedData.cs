namespace Lckv.Tests;

/// <summary>
/// Locates ../shared (golden fixtures, tokenizers, corpora): LCKV_SHARED, else the repository's parent folder.
/// Tests marked [SharedFact]/[SharedTheory] skip with a reason when it is absent, except under CI=true where they run
/// and fail.
/// </summary>
public static class SharedData
{
    public static readonly string? Root = Find();

    public static bool IsCi => string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase);

    public static string SkipReason => "../shared not found (set LCKV_SHARED or put shared/ beside the repository)";

    /// <summary>The path under shared/, or a failing assertion when shared/ is absent.</summary>
    public static string Path(params string[] parts)
    {
        if (Root is null) throw new InvalidOperationException(SkipReason);
        return System.IO.Path.Combine([Root, .. parts]);
    }

    private static string? Find()
    {
        var env = Environment.GetEnvironmentVariable("LCKV_SHARED");
        if (!string.IsNullOrEmpty(env)) return Directory.Exists(env) ? System.IO.Path.GetFullPath(env) : null;
        // walk up from the test binary to the repository root (the folder holding Lckv.sln), then its parent
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(System.IO.Path.Combine(dir.FullName, "Lckv.sln")))
            {
                var candidate = System.IO.Path.Combine(dir.Parent?.FullName ?? dir.FullName, "shared");
                return Directory.Exists(candidate) ? candidate : null;
            }
        }
        return null;
    }
}

public sealed class SharedFactAttribute : FactAttribute
{
    public SharedFactAttribute()
    {
        if (SharedData.Root is null && !SharedData.IsCi) Skip = SharedData.SkipReason;
    }
}

public sealed class SharedTheoryAttribute : TheoryAttribute
{
    public SharedTheoryAttribute()
    {
        if (SharedData.Root is null && !SharedData.IsCi) Skip = SharedData.SkipReason;
    }
}
