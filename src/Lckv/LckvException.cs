namespace Lckv;

/// <summary>
/// A problem with the user's input (a file, a config, a setting, a request). The message is one line that names the
/// problem and where it is, in the library's words (settings by what they are, never a front end's flags); the CLI
/// prints it, with the flags of <see cref="Settings"/>, and exits non-zero.
/// </summary>
public class LckvException : Exception
{
    public LckvException(string message) : base(message) { }
    public LckvException(string message, Exception inner) : base(message, inner) { }

    /// <summary>The settings the problem is about, by their names in the library (e.g. nameof(TrainerOptions.Batch)), so
    /// a front end can point at its own spelling of them; empty when none.</summary>
    public IReadOnlyList<string> Settings { get; init; } = [];
}
