using System.Globalization;
using System.Numerics;
using System.Text;

namespace Lckv.Chat;

/// <summary>
/// Template values are plain objects with Python's meaning: null (None), bool, long (int), double (float), string,
/// BigInteger (an int past 64 bits, from JSON input: printed and compared, no arithmetic),
/// List&lt;object?&gt; (list and tuple), Dictionary&lt;string, object?&gt; (dict, insertion-ordered), and the types below.
/// </summary>
internal sealed class Undefined(string hint)
{
    /// <summary>What was missing, for the error when the value is used in a way Jinja's default Undefined refuses.</summary>
    public string Hint { get; } = hint;
}

/// <summary>A tuple: a list that prints with parentheses.</summary>
internal sealed class PyTuple(IEnumerable<object?> items) : List<object?>(items);

/// <summary>What Jinja2's lazy filters (select, selectattr, map, unique, items, reverse, ...) return: a generator, which
/// is always true, has no len() and no items by index, and prints as an object; `| list` makes a list of it. (Unlike a
/// Python generator it can be walked more than once.)</summary>
internal sealed class PyIterator(IEnumerable<object?> items) : List<object?>(items)
{
    /// <summary>The error the generator raises when walked (its input could not be walked or filtered), or null.</summary>
    public string? Failure { get; init; }
}

/// <summary>namespace(...): the one object a template may assign attributes on, so state survives a loop body.</summary>
internal sealed class Namespace
{
    public Dictionary<string, object?> Attrs { get; } = [];
}

/// <summary>A function a template can call: a global, a macro, or a method bound to a value.</summary>
internal sealed class Callable(string name, Func<List<object?>, Dictionary<string, object?>, object?> invoke)
{
    public string Name { get; } = name;
    public object? Invoke(List<object?> args, Dictionary<string, object?> kwargs) => invoke(args, kwargs);
}

/// <summary>The `loop` variable of a for loop.</summary>
internal sealed class LoopInfo(List<object?> items)
{
    public int Index0 { get; set; }

    public object? Get(string name) => name switch
    {
        "index" => (long)(Index0 + 1),
        "index0" => (long)Index0,
        "revindex" => (long)(items.Count - Index0),
        "revindex0" => (long)(items.Count - Index0 - 1),
        "first" => Index0 == 0,
        "last" => Index0 == items.Count - 1,
        "length" => (long)items.Count,
        "depth" => 1L,
        "depth0" => 0L,
        "previtem" => Index0 > 0 ? items[Index0 - 1] : new Undefined("there is no previous item"),
        "nextitem" => Index0 + 1 < items.Count ? items[Index0 + 1] : new Undefined("there is no next item"),
        "cycle" => new Callable("loop.cycle", (a, _) =>
            a.Count == 0 ? throw new PyError("no items for cycling given") : a[Index0 % a.Count]),
        _ => new Undefined($"'loop' has no attribute '{name}'"),
    };
}

/// <summary>A runtime error without a location; the interpreter adds the template line.</summary>
internal sealed class PyError(string message) : Exception(message);

/// <summary>Python's semantics for the operations templates use: truth, str(), repr(), ==, ordering, arithmetic.</summary>
internal static class Py
{
    /// <summary>Python's str.isspace() for one UTF-16 unit (what strip() and the lexer's \s remove).</summary>
    public static bool IsSpace(char c) => char.IsWhiteSpace(c) || c is >= '\x1c' and <= '\x1f';

    public static string Strip(string s, string? chars = null, bool left = true, bool right = true)
    {
        int a = 0, b = s.Length;
        Func<char, bool> drop = chars is null ? IsSpace : chars.Contains;
        if (left) while (a < b && drop(s[a])) a++;
        if (right) while (b > a && drop(s[b - 1])) b--;
        return s[a..b];
    }

    public static string TypeName(object? v) => v switch
    {
        null => "NoneType",
        bool => "bool",
        long or BigInteger => "int",
        double => "float",
        string => "str",
        PyTuple => "tuple",
        PyIterator => "generator",
        List<object?> => "list",
        Dictionary<string, object?> => "dict",
        Undefined => "Undefined",
        Namespace => "Namespace",
        LoopInfo => "LoopContext",
        Callable => "function",
        _ => v.GetType().Name,
    };

    public static bool Truthy(object? v) => v switch
    {
        null or Undefined => false,
        PyIterator => true,
        bool b => b,
        long l => l != 0,
        BigInteger big => !big.IsZero,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> l => l.Count > 0,
        Dictionary<string, object?> d => d.Count > 0,
        _ => true,
    };

    /// <summary>Python's str(); Undefined prints as "".</summary>
    public static string Str(object? v) => v switch
    {
        string s => s,
        Undefined => "",
        _ => Repr(v),
    };

    public static string Repr(object? v)
    {
        switch (v)
        {
            case null: return "None";
            case bool b: return b ? "True" : "False";
            case long l: return l.ToString(CultureInfo.InvariantCulture);
            case BigInteger big: return big.ToString(CultureInfo.InvariantCulture);
            case double d: return FloatRepr(d);
            case string s: return StringRepr(s);
            case Undefined: return "";
            case PyIterator: return "<generator object>";
            case PyTuple t: return "(" + string.Join(", ", t.Select(Repr)) + (t.Count == 1 ? ",)" : ")");
            case List<object?> list: return "[" + string.Join(", ", list.Select(Repr)) + "]";
            case Dictionary<string, object?> dict:
                return "{" + string.Join(", ", dict.Select(kv => StringRepr(kv.Key) + ": " + Repr(kv.Value))) + "}";
            case Namespace ns:
                return "<Namespace " + Repr(ns.Attrs) + ">";
            case Callable c: return $"<function {c.Name}>";
            default: return v.ToString() ?? "";
        }
    }

    private static string StringRepr(string s)
    {
        char q = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        var sb = new StringBuilder().Append(q);
        foreach (char c in s)
        {
            switch (c)
            {
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (c == q) sb.Append('\\').Append(c);
                    else if (c < 0x20 || c == 0x7f) sb.Append("\\x").Append(((int)c).ToString("x2", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        return sb.Append(q).ToString();
    }

    /// <summary>Python's repr(float): the shortest round-trip digits, positional for exponents -4..15, else d.ddde+XX.</summary>
    public static string FloatRepr(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsInfinity(d)) return d > 0 ? "inf" : "-inf";
        if (d == 0) return double.IsNegative(d) ? "-0.0" : "0.0";
        string shortest = d.ToString("R", CultureInfo.InvariantCulture);
        string sign = d < 0 ? "-" : "";
        string body = shortest.TrimStart('-');
        int e = 0;
        int ePos = body.IndexOfAny(['E', 'e']);
        if (ePos >= 0)
        {
            e = int.Parse(body[(ePos + 1)..], CultureInfo.InvariantCulture);
            body = body[..ePos];
        }
        int dot = body.IndexOf('.');
        string digits = dot < 0 ? body : body[..dot] + body[(dot + 1)..];
        int pointPos = (dot < 0 ? body.Length : dot) + e; // digits before the decimal point
        int lead = 0;
        while (lead < digits.Length - 1 && digits[lead] == '0') lead++;
        digits = digits[lead..];
        pointPos -= lead;
        digits = digits.TrimEnd('0');
        if (digits.Length == 0) digits = "0";
        int exp = pointPos - 1;
        if (exp is >= -4 and < 16)
        {
            string intPart, frac;
            if (pointPos <= 0)
            {
                intPart = "0";
                frac = new string('0', -pointPos) + digits;
            }
            else if (pointPos >= digits.Length)
            {
                intPart = digits + new string('0', pointPos - digits.Length);
                frac = "0";
            }
            else
            {
                intPart = digits[..pointPos];
                frac = digits[pointPos..];
            }
            return sign + intPart + "." + frac;
        }
        string mant = digits.Length == 1 ? digits : digits[..1] + "." + digits[1..];
        return sign + mant + "e" + (exp < 0 ? "-" : "+") + Math.Abs(exp).ToString("00", CultureInfo.InvariantCulture);
    }

    private static bool IsNumber(object? v) => v is bool or long or double;

    private static double ToDouble(object? v) => v switch
    {
        bool b => b ? 1 : 0,
        long l => l,
        double d => d,
        _ => throw new PyError($"expected a number, got {TypeName(v)}"),
    };

    private static long ToLong(object? v) => v is bool b ? (b ? 1 : 0) : (long)v!;

    private static bool IsInt(object? v) => v is bool or long or BigInteger;

    private static BigInteger ToBig(object? v) => v is BigInteger b ? b : ToLong(v);

    public static bool Equal(object? a, object? b)
    {
        if (a is Undefined || b is Undefined) return a is Undefined && b is Undefined;
        if (a is null || b is null) return a is null && b is null;
        if (a is BigInteger || b is BigInteger) return IsInt(a) && IsInt(b) && ToBig(a) == ToBig(b);
        if (IsNumber(a) && IsNumber(b))
            return IsInt(a) && IsInt(b) ? ToLong(a) == ToLong(b) : ToDouble(a) == ToDouble(b);
        switch (a)
        {
            case string s: return b is string t && s == t;
            case PyIterator: return ReferenceEquals(a, b);
            case List<object?> x:
                return b is List<object?> y and not PyIterator && x.Count == y.Count && x.Zip(y).All(p => Equal(p.First, p.Second));
            case Dictionary<string, object?> x:
                return b is Dictionary<string, object?> other && x.Count == other.Count
                    && x.All(kv => other.TryGetValue(kv.Key, out var w) && Equal(kv.Value, w));
            default: return ReferenceEquals(a, b);
        }
    }

    /// <summary>Python's ordering (&lt; and friends): numbers, strings by code point, lists element-wise.</summary>
    public static int Compare(object? a, object? b, string op)
    {
        if ((a is BigInteger || b is BigInteger) && IsInt(a) && IsInt(b)) return ToBig(a).CompareTo(ToBig(b));
        if (IsNumber(a) && IsNumber(b))
            return IsInt(a) && IsInt(b) ? ToLong(a).CompareTo(ToLong(b)) : ToDouble(a).CompareTo(ToDouble(b));
        if (a is string s && b is string t) return CompareCodePoints(s, t);
        if (a is List<object?> x && b is List<object?> y)
        {
            for (int i = 0; i < Math.Min(x.Count, y.Count); i++)
                if (!Equal(x[i], y[i])) return Compare(x[i], y[i], op);
            return x.Count.CompareTo(y.Count);
        }
        if (a is Undefined u) throw new PyError(u.Hint);
        if (b is Undefined v) throw new PyError(v.Hint);
        throw new PyError($"'{op}' not supported between instances of '{TypeName(a)}' and '{TypeName(b)}'");
    }

    private static int CompareCodePoints(string s, string t)
    {
        int i = 0, j = 0;
        while (i < s.Length && j < t.Length)
        {
            int a = CodePointAt(s, i), b = CodePointAt(t, j);
            if (a != b) return a.CompareTo(b);
            i += a > 0xFFFF ? 2 : 1;
            j += b > 0xFFFF ? 2 : 1;
        }
        return (s.Length - i).CompareTo(t.Length - j);
    }

    private static int CodePointAt(string s, int i) =>
        char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]) ? char.ConvertToUtf32(s[i], s[i + 1]) : s[i];

    private static PyError Unsupported(string op, object? a, object? b)
    {
        if (a is Undefined u) return new PyError(u.Hint);
        if (b is Undefined v) return new PyError(v.Hint);
        if (op == "+" && a is string) return new PyError($"can only concatenate str (not \"{TypeName(b)}\") to str");
        if (op == "+" && a is PyTuple or List<object?> and not PyIterator)
            return new PyError($"can only concatenate {TypeName(a)} (not \"{TypeName(b)}\") to {TypeName(a)}");
        return new PyError($"unsupported operand type(s) for {op}: '{TypeName(a)}' and '{TypeName(b)}'");
    }

    public static object? Binary(string op, object? a, object? b)
    {
        if (op == "~") return Str(a) + Str(b);
        if (a is BigInteger || b is BigInteger) throw new PyError("arithmetic on integers past 64 bits is not supported");
        if (IsNumber(a) && IsNumber(b))
        {
            bool ints = IsInt(a) && IsInt(b);
            switch (op)
            {
                case "+": return ints ? (object)Checked(() => checked(ToLong(a) + ToLong(b))) : ToDouble(a) + ToDouble(b);
                case "-": return ints ? (object)Checked(() => checked(ToLong(a) - ToLong(b))) : ToDouble(a) - ToDouble(b);
                case "*": return ints ? (object)Checked(() => checked(ToLong(a) * ToLong(b))) : ToDouble(a) * ToDouble(b);
                case "/":
                    if (ToDouble(b) == 0) throw new PyError("division by zero");
                    return ToDouble(a) / ToDouble(b);
                case "//":
                    if (ToDouble(b) == 0) throw new PyError("integer division or modulo by zero");
                    if (ints)
                    {
                        long x = ToLong(a), y = ToLong(b), q = x / y;
                        return (x % y != 0 && (x < 0) != (y < 0)) ? q - 1 : q;
                    }
                    return Math.Floor(ToDouble(a) / ToDouble(b));
                case "%":
                    if (ToDouble(b) == 0) throw new PyError("integer division or modulo by zero");
                    if (ints)
                    {
                        long x = ToLong(a), y = ToLong(b), m = x % y;
                        return m != 0 && (m < 0) != (y < 0) ? m + y : m;
                    }
                    double fx = ToDouble(a), fy = ToDouble(b), fm = fx % fy;
                    return fm != 0 && (fm < 0) != (fy < 0) ? fm + fy : fm;
                case "**":
                    if (ints && ToLong(b) >= 0)
                    {
                        long r = 1, x = ToLong(a);
                        for (long i = 0; i < ToLong(b); i++) r = Checked(() => checked(r * x));
                        return r;
                    }
                    return Math.Pow(ToDouble(a), ToDouble(b));
            }
        }
        switch (op, a, b)
        {
            case ("+", string s, string t): return s + t;
            case ("+", PyTuple x, PyTuple y): return new PyTuple([.. x, .. y]);
            case ("+", List<object?> x and not PyIterator and not PyTuple, List<object?> y and not PyIterator and not PyTuple):
                return new List<object?>([.. x, .. y]);
            case ("*", string s, long or bool): return Repeat(s, ToLong(b));
            case ("*", long or bool, string s): return Repeat(s, ToLong(a));
            case ("*", PyTuple x, long or bool): return new PyTuple(Enumerable.Repeat(x, Count(ToLong(b))).SelectMany(l => l));
            case ("*", List<object?> x and not PyIterator, long or bool): return Enumerable.Repeat(x, Count(ToLong(b))).SelectMany(l => l).ToList();
            case ("%", string s, _): return Format(s, b);
        }
        throw Unsupported(op, a, b);
    }

    /// <summary>printf-style `'%s' % x`: %s, %r, %d, %i, %f (with an optional .precision) and %%.</summary>
    private static string Format(string format, object? args)
    {
        List<object?> values = args is PyTuple t ? t : [args];
        // Python skips the unused-arguments check when the right side is a mapping or a non-tuple sequence
        bool lenient = args is Dictionary<string, object?> or Undefined || (args is List<object?> and not PyTuple and not PyIterator);
        var sb = new StringBuilder();
        int next = 0;
        object? Take() => next < values.Count ? values[next++] : throw new PyError("not enough arguments for format string");
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%')
            {
                sb.Append(format[i]);
                continue;
            }
            if (++i >= format.Length) throw new PyError("incomplete format");
            int? precision = null;
            if (format[i] == '.')
            {
                int start = ++i;
                while (i < format.Length && char.IsAsciiDigit(format[i])) i++;
                precision = i > start ? int.Parse(format.AsSpan(start, i - start), CultureInfo.InvariantCulture) : 0;
                if (i >= format.Length) throw new PyError("incomplete format");
            }
            switch (format[i])
            {
                case '%': sb.Append('%'); break;
                case 's': sb.Append(Str(Take())); break;
                case 'r': sb.Append(Repr(Take())); break;
                case 'd' or 'i':
                    var n = Take();
                    sb.Append(n is double d ? ((long)Math.Truncate(d)).ToString(CultureInfo.InvariantCulture)
                        : IsInt(n) ? ToLong(n).ToString(CultureInfo.InvariantCulture)
                        : throw new PyError($"%{format[i]} format: a real number is required, not {TypeName(n)}"));
                    break;
                case 'f':
                    sb.Append(ToDouble(Take()).ToString("F" + (precision ?? 6), CultureInfo.InvariantCulture));
                    break;
                default: throw new PyError($"unsupported format character '{format[i]}'");
            }
        }
        if (next < values.Count && !lenient) throw new PyError("not all arguments converted during string formatting");
        return sb.ToString();
    }

    private static int Count(long n) => n <= 0 ? 0 : n > 1_000_000 ? throw new PyError("repetition too large") : (int)n;

    private static string Repeat(string s, long n) =>
        (long)s.Length * Math.Max(0, n) > 100_000_000 ? throw new PyError("repetition too large") : string.Concat(Enumerable.Repeat(s, Count(n)));

    private static long Checked(Func<long> f)
    {
        try { return f(); }
        catch (OverflowException) { throw new PyError("integer overflow (values past 64 bits are not supported)"); }
    }

    public static object? Negate(object? v) => v switch
    {
        bool b => b ? -1L : 0L,
        long l => (object)(-l),
        double d => -d,
        Undefined u => throw new PyError(u.Hint),
        _ => throw new PyError($"bad operand type for unary -: '{TypeName(v)}'"),
    };

    /// <summary>`item in container`.</summary>
    public static bool Contains(object? container, object? item) => container switch
    {
        PyIterator { Failure: { } failure } => throw new PyError(failure),
        string s => item is string t ? s.Contains(t, StringComparison.Ordinal)
            : throw new PyError($"'in <string>' requires string as left operand, not {TypeName(item)}"),
        List<object?> l => l.Any(x => Equal(x, item)),
        Dictionary<string, object?> d => item is List<object?> or Dictionary<string, object?> or Namespace
            ? throw new PyError($"unhashable type: '{TypeName(item)}'") : item is string k && d.ContainsKey(k),
        Namespace ns => item is string k && ns.Attrs.ContainsKey(k),
        Undefined => false,
        _ => throw new PyError($"argument of type '{TypeName(container)}' is not iterable"),
    };

    /// <summary>What `for` walks: list items, dict keys, string code points; nothing for Undefined.</summary>
    public static List<object?> Iterate(object? v) => v switch
    {
        PyIterator { Failure: { } failure } => throw new PyError(failure),
        List<object?> l => l,
        Dictionary<string, object?> d => d.Keys.Cast<object?>().ToList(),
        string s => CodePoints(s).Cast<object?>().ToList(),
        Undefined => [],
        _ => throw new PyError($"'{TypeName(v)}' object is not iterable"),
    };

    public static List<string> CodePoints(string s)
    {
        var list = new List<string>(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
            {
                list.Add(s.Substring(i, 2));
                i++;
            }
            else list.Add(s[i].ToString());
        }
        return list;
    }

    public static long Length(object? v) => v switch
    {
        PyIterator => throw new PyError("object of type 'generator' has no len()"),
        string s => CodePoints(s).Count,
        List<object?> l => l.Count,
        Dictionary<string, object?> d => d.Count,
        Undefined => 0,
        _ => throw new PyError($"object of type '{TypeName(v)}' has no len()"),
    };

    /// <summary>Python's slice of a list or a string (by code points).</summary>
    public static object? Slice(object? target, object? start, object? stop, object? step)
    {
        long st = step is null ? 1 : IsInt(step) ? ToLong(step) : throw new PyError("slice indices must be integers or None");
        if (st == 0) throw new PyError("slice step cannot be zero");
        List<object?> items = target switch
        {
            List<object?> l and not PyIterator => l,
            string s => CodePoints(s).Cast<object?>().ToList(),
            Undefined u => throw new PyError(u.Hint),
            Dictionary<string, object?> => throw new PyError("unhashable type: 'slice'"),
            _ => throw new PyError($"'{TypeName(target)}' object is not subscriptable"),
        };
        long n = items.Count;
        long Bound(object? v, long dflt, bool isStart)
        {
            if (v is null) return dflt;
            if (!IsInt(v)) throw new PyError("slice indices must be integers or None");
            long i = ToLong(v);
            if (i < 0) i += n;
            if (st > 0) return Math.Clamp(i, 0, n);
            return Math.Clamp(i, -1, n - 1);
        }
        long a = Bound(start, st > 0 ? 0 : n - 1, true), b = Bound(stop, st > 0 ? n : -1, false);
        var result = new List<object?>();
        if (st > 0) for (long i = a; i < b; i += st) result.Add(items[(int)i]);
        else for (long i = a; i > b; i += st) result.Add(items[(int)i]);
        return target is string ? string.Concat(result.Cast<string>()) : target is PyTuple ? new PyTuple(result) : result;
    }

    /// <summary>Python's json.dumps with Hugging Face's tojson defaults (ensure_ascii=False, no sorting).</summary>
    public static string Json(object? v, bool ensureAscii, string? indent, string itemSep, string keySep, bool sortKeys)
    {
        var sb = new StringBuilder();
        WriteJson(sb, v, ensureAscii, indent, itemSep, keySep, sortKeys, 0);
        return sb.ToString();
    }

    private static void WriteJson(StringBuilder sb, object? v, bool ascii, string? indent, string itemSep, string keySep, bool sort, int depth)
    {
        switch (v)
        {
            case null: sb.Append("null"); return;
            case bool b: sb.Append(b ? "true" : "false"); return;
            case long l: sb.Append(l.ToString(CultureInfo.InvariantCulture)); return;
            case BigInteger big: sb.Append(big.ToString(CultureInfo.InvariantCulture)); return;
            case double d:
                sb.Append(double.IsNaN(d) ? "NaN" : double.IsPositiveInfinity(d) ? "Infinity" : double.IsNegativeInfinity(d) ? "-Infinity" : FloatRepr(d));
                return;
            case string s: JsonString(sb, s, ascii); return;
            case PyIterator: throw new PyError("Object of type generator is not JSON serializable");
            case List<object?> list:
                if (list.Count == 0)
                {
                    sb.Append("[]");
                    return;
                }
                sb.Append('[');
                for (int i = 0; i < list.Count; i++)
                {
                    if (i > 0) sb.Append(itemSep);
                    NewLine(sb, indent, depth + 1);
                    WriteJson(sb, list[i], ascii, indent, itemSep, keySep, sort, depth + 1);
                }
                NewLine(sb, indent, depth);
                sb.Append(']');
                return;
            case Dictionary<string, object?> dict:
                if (dict.Count == 0)
                {
                    sb.Append("{}");
                    return;
                }
                sb.Append('{');
                IEnumerable<KeyValuePair<string, object?>> pairs = sort ? dict.OrderBy(kv => kv.Key, StringComparer.Ordinal) : dict;
                bool first = true;
                foreach (var (key, value) in pairs)
                {
                    if (!first) sb.Append(itemSep);
                    first = false;
                    NewLine(sb, indent, depth + 1);
                    JsonString(sb, key, ascii);
                    sb.Append(keySep);
                    WriteJson(sb, value, ascii, indent, itemSep, keySep, sort, depth + 1);
                }
                NewLine(sb, indent, depth);
                sb.Append('}');
                return;
            case Undefined u: throw new PyError(u.Hint);
            default: throw new PyError($"Object of type {TypeName(v)} is not JSON serializable");
        }
    }

    private static void NewLine(StringBuilder sb, string? indent, int depth)
    {
        if (indent is null) return;
        sb.Append('\n');
        for (int i = 0; i < depth; i++) sb.Append(indent);
    }

    private static void JsonString(StringBuilder sb, string s, bool ascii)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20 || (ascii && c > 0x7e)) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}
