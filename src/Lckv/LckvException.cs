namespace Lckv;

/// <summary>
/// A problem with the user's input (a file, a config, a setting, a request). The message is one line that names the
/// problem and where it is; the CLI prints it as is and exits non-zero.
/// </summary>
public class LckvException : Exception
{
    public LckvException(string message) : base(message) { }
    public LckvException(string message, Exception inner) : base(message, inner) { }
}
