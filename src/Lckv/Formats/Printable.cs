using System.Text;

namespace Lckv.Formats;

/// <summary>Text that came from a file, made safe to print on one line of a terminal.</summary>
public static class Printable
{
    /// <summary>
    /// Control characters (C0, DEL, C1) and the Unicode line and paragraph separators become \xNN or \uNNNN, so a
    /// name holding an escape sequence or a newline cannot drive the terminal or break a one-line message; text
    /// longer than maxChars is cut and ends in "...".
    /// </summary>
    public static string Escape(string s, int maxChars = 80)
    {
        ArgumentNullException.ThrowIfNull(s);
        bool cut = s.Length > maxChars;
        var text = cut ? s.AsSpan(0, Math.Max(0, maxChars - 3)) : s.AsSpan();
        StringBuilder? sb = null;
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            bool control = c < 0x20 || (c >= 0x7F && c <= 0x9F) || c is '\u2028' or '\u2029';
            if (!control)
            {
                sb?.Append(c);
                continue;
            }
            sb ??= new StringBuilder().Append(text[..i]);
            sb.Append(c <= 0xFF ? $"\\x{(int)c:x2}" : $"\\u{(int)c:x4}");
        }
        string result = sb?.ToString() ?? text.ToString();
        return cut ? result + "..." : result;
    }
}
