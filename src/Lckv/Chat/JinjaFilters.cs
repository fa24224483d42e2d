using System.Globalization;
using System.Text;

namespace Lckv.Chat;

/// <summary>Jinja2's filters and tests that chat templates use, plus the common neighbours; tojson has Hugging Face's
/// signature (json.dumps with ensure_ascii=False, indent, separators, sort_keys).</summary>
internal static class JinjaFilters
{
    /// <summary>The filters <see cref="Apply"/> knows; the parser refuses others, as Jinja2 does when it compiles.</summary>
    public static readonly HashSet<string> FilterNames =
    [
        "trim", "tojson", "length", "count", "list", "string", "items", "selectattr", "rejectattr", "select", "reject", "map",
        "join", "first", "last", "upper", "lower", "title", "capitalize", "replace", "default", "d", "int", "float", "abs",
        "round", "reverse", "sort", "unique", "min", "max", "sum", "indent", "safe", "escape", "e",
    ];

    /// <summary>The tests <see cref="Test"/> knows.</summary>
    public static readonly HashSet<string> TestNames =
    [
        "defined", "undefined", "none", "boolean", "true", "false", "integer", "float", "number", "string", "mapping",
        "iterable", "sequence", "callable", "equalto", "eq", "==", "sameas", "ne", "!=", "lt", "lessthan", "<", "le", "<=",
        "gt", "greaterthan", ">", "ge", ">=", "in", "odd", "even", "divisibleby", "lower", "upper",
    ];

    private static object? Arg(List<object?> args, Dictionary<string, object?> kwargs, int index, string name, object? dflt) =>
        index < args.Count ? args[index] : kwargs.TryGetValue(name, out var v) ? v : dflt;

    private static List<object?> Seq(object? v) => Py.Iterate(v);

    /// <summary>The filters that are generators in Jinja2: their failures surface only when the result is walked.</summary>
    private static bool IsLazy(string name) => name is "items" or "selectattr" or "rejectattr" or "select" or "reject" or "map" or "unique";

    public static object? Apply(string name, object? value, List<object?> args, Dictionary<string, object?> kwargs, JinjaInterpreter interp)
    {
        if (!IsLazy(name)) return ApplyCore(name, value, args, kwargs, interp);
        try { return ApplyCore(name, value, args, kwargs, interp); }
        catch (PyError e) { return new PyIterator([]) { Failure = e.Message }; }
    }

    private static object? ApplyCore(string name, object? value, List<object?> args, Dictionary<string, object?> kwargs, JinjaInterpreter interp)
    {
        switch (name)
        {
            case "trim":
                return Py.Strip(Py.Str(value), Arg(args, kwargs, 0, "chars", null) as string);
            case "tojson":
                return ToJson(value, args, kwargs);
            case "length" or "count":
                return Py.Length(value);
            case "list":
                return new List<object?>(Seq(value));
            case "string":
                return Py.Str(value);
            case "items":
                if (value is Undefined) return new PyIterator([]);
                if (value is not Dictionary<string, object?> map) throw new PyError("Can only get item pairs from a mapping.");
                return new PyIterator(map.Select(kv => (object?)new PyTuple([kv.Key, kv.Value])));
            case "selectattr" or "rejectattr":
            {
                string attr = Arg(args, kwargs, 0, "attribute", null) as string ?? throw new PyError($"{name} needs an attribute name");
                bool keep = name == "selectattr";
                return new PyIterator(Seq(value).Where(item => Check(LookupPath(item, attr), args.Skip(1).ToList()) == keep));
            }
            case "select" or "reject":
            {
                bool keep = name == "select";
                return new PyIterator(Seq(value).Where(item => Check(item, args) == keep));
            }
            case "map":
            {
                if (kwargs.TryGetValue("attribute", out var a) && a is string attr)
                {
                    var dflt = kwargs.GetValueOrDefault("default");
                    return new PyIterator(Seq(value).Select(item =>
                    {
                        var v = LookupPath(item, attr);
                        return v is Undefined && kwargs.ContainsKey("default") ? dflt : v;
                    }));
                }
                if (args.Count == 0 || args[0] is not string filter) throw new PyError("map needs a filter name or attribute=");
                var rest = args.Skip(1).ToList();
                return new PyIterator(Seq(value).Select(item => Apply(filter, item, rest, kwargs, interp)));
            }
            case "join":
            {
                string sep = Py.Str(Arg(args, kwargs, 0, "d", ""));
                var attr = Arg(args, kwargs, 1, "attribute", null) as string;
                return string.Join(sep, Seq(value).Select(x => Py.Str(attr is null ? x : LookupPath(x, attr))));
            }
            case "first":
            {
                var s = Seq(value);
                return s.Count > 0 ? s[0] : new Undefined("No first item, sequence was empty.");
            }
            case "last":
            {
                var s = Seq(value);
                return s.Count > 0 ? s[^1] : new Undefined("No last item, sequence was empty.");
            }
            case "upper":
                return Py.Str(value).ToUpperInvariant();
            case "lower":
                return Py.Str(value).ToLowerInvariant();
            case "title":
                return JinjaMethods.Title(Py.Str(value));
            case "capitalize":
                return JinjaMethods.Capitalize(Py.Str(value));
            case "replace":
                return JinjaMethods.Replace(Py.Str(value), Py.Str(Arg(args, kwargs, 0, "old", "")), Py.Str(Arg(args, kwargs, 1, "new", "")),
                    Arg(args, kwargs, 2, "count", null) is long n ? n : -1);
            case "default" or "d":
            {
                var dflt = Arg(args, kwargs, 0, "default_value", "");
                bool boolean = Py.Truthy(Arg(args, kwargs, 1, "boolean", false));
                return value is Undefined || (boolean && !Py.Truthy(value)) ? dflt : value;
            }
            case "int" or "float" when value is Undefined u:
                throw new PyError(u.Hint);
            case "int":
            {
                var dflt = Arg(args, kwargs, 0, "default", 0L);
                return value switch
                {
                    bool b => b ? 1L : 0L,
                    long l => l,
                    double d => (long)Math.Truncate(d),
                    string s when long.TryParse(s.Trim(), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var l) => l,
                    string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var d) => (long)Math.Truncate(d),
                    _ => dflt,
                };
            }
            case "float":
            {
                var dflt = Arg(args, kwargs, 0, "default", 0.0);
                return value switch
                {
                    bool b => b ? 1.0 : 0.0,
                    long l => (double)l,
                    double d => d,
                    string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var d) => d,
                    _ => dflt,
                };
            }
            case "abs":
                return value switch
                {
                    long l => (object)Math.Abs(l),
                    double d => Math.Abs(d),
                    bool b => b ? 1L : 0L,
                    _ => throw new PyError($"bad operand type for abs(): '{Py.TypeName(value)}'"),
                };
            case "round":
            {
                int precision = Arg(args, kwargs, 0, "precision", 0L) is long p ? (int)p : 0;
                string method = Arg(args, kwargs, 1, "method", "common") as string ?? "common";
                double d = value is long l ? l : value is double x ? x : throw new PyError("round expects a number");
                double scale = Math.Pow(10, precision);
                return method switch
                {
                    "ceil" => Math.Ceiling(d * scale) / scale,
                    "floor" => Math.Floor(d * scale) / scale,
                    _ => Math.Round(d, precision, MidpointRounding.AwayFromZero),
                };
            }
            case "reverse":
                if (value is string rs) return string.Concat(Enumerable.Reverse(Py.CodePoints(rs)));
                try { return new PyIterator(Enumerable.Reverse(Seq(value))); }
                catch (PyError) { throw new PyError("argument must be iterable"); }
            case "sort":
            {
                bool reverse = Py.Truthy(Arg(args, kwargs, 0, "reverse", false));
                bool caseSensitive = Py.Truthy(Arg(args, kwargs, 1, "case_sensitive", false));
                var attr = Arg(args, kwargs, 2, "attribute", null) as string;
                var sorted = Seq(value).Select((x, i) => (Key: SortKey(x, caseSensitive, attr), Item: x, Index: i)).ToList();
                sorted.Sort((p, q) =>
                {
                    int c = Py.Compare(p.Key, q.Key, "<");
                    return c != 0 ? (reverse ? -c : c) : p.Index.CompareTo(q.Index);
                });
                return sorted.Select(p => p.Item).ToList();
            }
            case "unique":
            {
                bool caseSensitive = Py.Truthy(Arg(args, kwargs, 0, "case_sensitive", false));
                var attr = Arg(args, kwargs, 1, "attribute", null) as string;
                var result = new List<object?>();
                var seen = new List<object?>();
                foreach (var x in Seq(value))
                {
                    var key = SortKey(x, caseSensitive, attr);
                    if (seen.Any(y => Py.Equal(key, y))) continue;
                    seen.Add(key);
                    result.Add(x);
                }
                return new PyIterator(result);
            }
            case "min" or "max":
            {
                bool caseSensitive = Py.Truthy(Arg(args, kwargs, 0, "case_sensitive", false));
                var attr = Arg(args, kwargs, 1, "attribute", null) as string;
                var s = Seq(value);
                if (s.Count == 0) return new Undefined($"No {name} item, sequence was empty.");
                var best = s[0];
                var bestKey = SortKey(best, caseSensitive, attr);
                foreach (var x in s.Skip(1))
                {
                    var key = SortKey(x, caseSensitive, attr);
                    int c = Py.Compare(key, bestKey, "<");
                    if (name == "min" ? c < 0 : c > 0) (best, bestKey) = (x, key);
                }
                return best;
            }
            case "sum":
            {
                var attr = Arg(args, kwargs, 0, "attribute", null) as string;
                object? total = Arg(args, kwargs, 1, "start", 0L);
                foreach (var x in Seq(value)) total = Py.Binary("+", total, attr is null ? x : LookupPath(x, attr));
                return total;
            }
            case "indent":
            {
                var w = Arg(args, kwargs, 0, "width", 4L);
                string pad = w is string ws ? ws : new string(' ', (int)(w is long wl ? Math.Max(0, wl) : 4));
                bool first = Py.Truthy(Arg(args, kwargs, 1, "first", false));
                bool blank = Py.Truthy(Arg(args, kwargs, 2, "blank", false));
                var lines = JinjaMethods.SplitLines(Py.Str(value) + "\n");
                string rv = blank ? string.Join("\n" + pad, lines)
                    : lines[0] + (lines.Count > 1 ? "\n" + string.Join("\n", lines.Skip(1).Select(l => l.Length > 0 ? pad + l : l)) : "");
                return first ? pad + rv : rv;
            }
            case "safe":
                return value;
            case "escape" or "e":
                return Py.Str(value).Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;").Replace("\"", "&#34;").Replace("'", "&#39;");
            default:
                throw new PyError($"no filter named '{name}'");
        }
    }

    private static string ToJson(object? value, List<object?> args, Dictionary<string, object?> kwargs)
    {
        bool ascii = Py.Truthy(Arg(args, kwargs, 0, "ensure_ascii", false));
        string? indent = Arg(args, kwargs, 1, "indent", null) switch
        {
            null => null,
            long n => new string(' ', (int)Math.Max(0, n)),
            string s => s,
            var other => throw new PyError($"tojson: indent must be an integer or a string, got {Py.TypeName(other)}"),
        };
        string itemSep = indent is null ? ", " : ",", keySep = ": ";
        if (Arg(args, kwargs, 2, "separators", null) is List<object?> { Count: 2 } seps)
        {
            itemSep = seps[0] as string ?? throw new PyError("tojson: separators must be strings");
            keySep = seps[1] as string ?? throw new PyError("tojson: separators must be strings");
        }
        bool sort = Py.Truthy(Arg(args, kwargs, 3, "sort_keys", false));
        return Py.Json(value, ascii, indent, itemSep, keySep, sort);
    }

    /// <summary>What sort, unique, min and max compare: the attribute when given, strings lower-cased unless
    /// case_sensitive (Jinja's default ignores case).</summary>
    private static object? SortKey(object? item, bool caseSensitive, string? attr)
    {
        var key = attr is null ? item : LookupPath(item, attr);
        return !caseSensitive && key is string s ? s.ToLowerInvariant() : key;
    }

    /// <summary>Jinja's attribute path for selectattr/map/join: `a.b.0` walks attributes, digits index.</summary>
    private static object? LookupPath(object? item, string path)
    {
        foreach (var part in path.Split('.'))
            item = long.TryParse(part, CultureInfo.InvariantCulture, out long i)
                ? JinjaInterpreter.GetItem(item, i) : JinjaInterpreter.GetAttr(item, part);
        return item;
    }

    /// <summary>select/selectattr: args[0] names the test (truthiness when absent), the rest are its arguments.</summary>
    private static bool Check(object? value, List<object?> args)
    {
        if (args.Count == 0) return Py.Truthy(value);
        string test = args[0] as string ?? throw new PyError("the test name must be a string");
        return Test(test, value, args.Skip(1).ToList());
    }

    public static bool Test(string name, object? value, List<object?> args)
    {
        object? A(int i) => i < args.Count ? args[i] : throw new PyError($"test '{name}' needs an argument");
        return name switch
        {
            "defined" => value is not Undefined,
            "undefined" => value is Undefined,
            "none" => value is null,
            "boolean" => value is bool,
            "true" => value is true,
            "false" => value is false,
            "integer" => value is long or System.Numerics.BigInteger,
            "float" => value is double,
            "number" => value is long or double or bool or System.Numerics.BigInteger,
            "string" => value is string,
            "mapping" => value is Dictionary<string, object?>,
            "iterable" => value is string or List<object?> or Dictionary<string, object?> or Undefined,
            "sequence" => value is string or List<object?> or Dictionary<string, object?>,
            "callable" => value is Callable,
            "equalto" or "eq" or "==" => Py.Equal(value, A(0)),
            "sameas" => value is null or bool or long or double or string ? Py.TypeName(value) == Py.TypeName(A(0)) && Py.Equal(value, A(0))
                : ReferenceEquals(value, A(0)),
            "ne" or "!=" => !Py.Equal(value, A(0)),
            "lt" or "lessthan" or "<" => Py.Compare(value, A(0), "<") < 0,
            "le" or "<=" => Py.Compare(value, A(0), "<=") <= 0,
            "gt" or "greaterthan" or ">" => Py.Compare(value, A(0), ">") > 0,
            "ge" or ">=" => Py.Compare(value, A(0), ">=") >= 0,
            "in" => Py.Contains(A(0), value),
            "odd" => Py.Equal(Py.Binary("%", value, 2L), 1L),
            "even" => Py.Equal(Py.Binary("%", value, 2L), 0L),
            "divisibleby" => Py.Equal(Py.Binary("%", value, A(0)), 0L),
            "lower" => JinjaMethods.IsLower(Py.Str(value)),
            "upper" => JinjaMethods.IsUpper(Py.Str(value)),
            _ => throw new PyError($"no test named '{name}'"),
        };
    }
}

/// <summary>The methods of str and dict a template may call (read-only, as in Hugging Face's immutable sandbox).</summary>
internal static class JinjaMethods
{
    private static object? Arg(List<object?> a, Dictionary<string, object?> kw, int i, string name, object? dflt) =>
        i < a.Count ? a[i] : kw.TryGetValue(name, out var v) ? v : dflt;

    private static string StrArg(List<object?> a, Dictionary<string, object?> kw, int i, string name, string method) =>
        Arg(a, kw, i, name, null) as string ?? throw new PyError($"{method}() needs a string argument");

    public static Callable? Str(string s, string name)
    {
        Func<List<object?>, Dictionary<string, object?>, object?>? f = name switch
        {
            "strip" => (a, kw) => Py.Strip(s, Arg(a, kw, 0, "chars", null) as string),
            "lstrip" => (a, kw) => Py.Strip(s, Arg(a, kw, 0, "chars", null) as string, right: false),
            "rstrip" => (a, kw) => Py.Strip(s, Arg(a, kw, 0, "chars", null) as string, left: false),
            "split" => (a, kw) => Split(s, Arg(a, kw, 0, "sep", null) as string, Arg(a, kw, 1, "maxsplit", -1L) is long m ? m : -1, false),
            "rsplit" => (a, kw) => Split(s, Arg(a, kw, 0, "sep", null) as string, Arg(a, kw, 1, "maxsplit", -1L) is long m ? m : -1, true),
            "startswith" => (a, kw) => Affix(Arg(a, kw, 0, "prefix", null), p => s.StartsWith(p, StringComparison.Ordinal)),
            "endswith" => (a, kw) => Affix(Arg(a, kw, 0, "suffix", null), p => s.EndsWith(p, StringComparison.Ordinal)),
            "upper" => (_, _) => s.ToUpperInvariant(),
            "lower" => (_, _) => s.ToLowerInvariant(),
            "title" => (_, _) => Title(s),
            "capitalize" => (_, _) => Capitalize(s),
            "replace" => (a, kw) => Replace(s, StrArg(a, kw, 0, "old", name), StrArg(a, kw, 1, "new", name),
                Arg(a, kw, 2, "count", -1L) is long n ? n : -1),
            "find" => (a, kw) => (long)CodePointIndex(s, s.IndexOf(StrArg(a, kw, 0, "sub", name), StringComparison.Ordinal)),
            "rfind" => (a, kw) => (long)CodePointIndex(s, s.LastIndexOf(StrArg(a, kw, 0, "sub", name), StringComparison.Ordinal)),
            "count" => (a, kw) => (long)Count(s, StrArg(a, kw, 0, "sub", name)),
            "join" => (a, kw) => string.Join(s, Py.Iterate(Arg(a, kw, 0, "iterable", null)).Select(x =>
                x as string ?? throw new PyError($"sequence item: expected str instance, {Py.TypeName(x)} found"))),
            "splitlines" => (_, _) => SplitLines(s).Cast<object?>().ToList(),
            "format" => (a, kw) => Format(s, a, kw),
            "isdigit" => (_, _) => s.Length > 0 && s.All(char.IsDigit),
            "isalpha" => (_, _) => s.Length > 0 && s.All(char.IsLetter),
            "isalnum" => (_, _) => s.Length > 0 && s.All(char.IsLetterOrDigit),
            "isspace" => (_, _) => s.Length > 0 && s.All(Py.IsSpace),
            "islower" => (_, _) => IsLower(s),
            "isupper" => (_, _) => IsUpper(s),
            _ => null,
        };
        return f is null ? null : new Callable("str." + name, f);
    }

    public static Callable? Dict(Dictionary<string, object?> d, string name)
    {
        Func<List<object?>, Dictionary<string, object?>, object?>? f = name switch
        {
            "items" => (_, _) => d.Select(kv => (object?)new PyTuple([kv.Key, kv.Value])).ToList(),
            "keys" => (_, _) => d.Keys.Cast<object?>().ToList(),
            "values" => (_, _) => d.Values.ToList(),
            "get" => (a, kw) => Arg(a, kw, 0, "key", null) is string k && d.TryGetValue(k, out var v) ? v : Arg(a, kw, 1, "default", null),
            _ => null,
        };
        return f is null ? null : new Callable("dict." + name, f);
    }

    /// <summary>Python's str.islower / isupper: some cased character, and none of the other case.</summary>
    internal static bool IsLower(string s) => s.Any(char.IsLower) && !s.Any(char.IsUpper);

    internal static bool IsUpper(string s) => s.Any(char.IsUpper) && !s.Any(char.IsLower);

    /// <summary>Python's str.format with `{}`, `{0}` and `{name}` fields (no conversions or format specs) and `{{ }}`.</summary>
    private static string Format(string format, List<object?> args, Dictionary<string, object?> kwargs)
    {
        var sb = new StringBuilder();
        int auto = 0;
        for (int i = 0; i < format.Length; i++)
        {
            char c = format[i];
            if (c is '{' or '}' && i + 1 < format.Length && format[i + 1] == c)
            {
                sb.Append(c);
                i++;
                continue;
            }
            if (c == '}') throw new PyError("Single '}' encountered in format string");
            if (c != '{')
            {
                sb.Append(c);
                continue;
            }
            int close = format.IndexOf('}', i + 1);
            if (close < 0) throw new PyError("Single '{' encountered in format string");
            string field = format[(i + 1)..close];
            if (field.IndexOfAny([':', '!', '.', '[']) >= 0) throw new PyError($"str.format: only plain fields are supported, got '{{{field}}}'");
            int index = field.Length == 0 ? auto++ : int.TryParse(field, NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n : -1;
            object? value = index >= 0
                ? (index < args.Count ? args[index] : throw new PyError($"Replacement index {index} out of range for positional args tuple"))
                : kwargs.TryGetValue(field, out var kv) ? kv : throw new PyError($"str.format: no argument named '{field}'");
            sb.Append(Py.Str(value));
            i = close;
        }
        return sb.ToString();
    }

    /// <summary>Python's str.splitlines() for \n, \r\n and \r: no empty last item for a final line break.</summary>
    internal static List<string> SplitLines(string s)
    {
        var lines = new List<string>();
        int start = 0;
        for (int i = 0; i < s.Length; i++)
        {
            if (s[i] is not ('\n' or '\r')) continue;
            lines.Add(s[start..i]);
            if (s[i] == '\r' && i + 1 < s.Length && s[i + 1] == '\n') i++;
            start = i + 1;
        }
        if (start < s.Length) lines.Add(s[start..]);
        return lines;
    }

    private static bool Affix(object? arg, Func<string, bool> test) => arg switch
    {
        string p => test(p),
        List<object?> options => options.Any(o => o is string p && test(p)),
        _ => throw new PyError("startswith/endswith takes a string or a tuple of strings"),
    };

    private static int CodePointIndex(string s, int utf16Index) =>
        utf16Index < 0 ? -1 : Py.CodePoints(s[..utf16Index]).Count;

    private static int Count(string s, string sub)
    {
        if (sub.Length == 0) return Py.CodePoints(s).Count + 1;
        int n = 0;
        for (int i = s.IndexOf(sub, StringComparison.Ordinal); i >= 0; i = s.IndexOf(sub, i + sub.Length, StringComparison.Ordinal)) n++;
        return n;
    }

    /// <summary>Python's str.split / rsplit: on runs of whitespace (dropping empty ends) without a separator.</summary>
    internal static List<object?> Split(string s, string? sep, long maxsplit, bool fromRight)
    {
        var parts = new List<string>();
        if (sep is null)
        {
            var words = new List<(int Start, int End)>();
            int i = 0;
            while (i < s.Length)
            {
                while (i < s.Length && Py.IsSpace(s[i])) i++;
                if (i >= s.Length) break;
                int start = i;
                while (i < s.Length && !Py.IsSpace(s[i])) i++;
                words.Add((start, i));
            }
            if (maxsplit < 0 || words.Count <= maxsplit + 1) return words.Select(w => (object?)s[w.Start..w.End]).ToList();
            if (!fromRight)
            {
                var head = words.Take((int)maxsplit).Select(w => (object?)s[w.Start..w.End]).ToList();
                head.Add(Py.Strip(s[words[(int)maxsplit].Start..], left: false));
                return head;
            }
            var tail = words.Skip(words.Count - (int)maxsplit).Select(w => (object?)s[w.Start..w.End]).ToList();
            tail.Insert(0, Py.Strip(s[..words[words.Count - (int)maxsplit - 1].End], right: false));
            return tail;
        }
        if (sep.Length == 0) throw new PyError("empty separator");
        var all = s.Split(sep);
        if (maxsplit < 0 || all.Length <= maxsplit + 1) return all.Cast<object?>().ToList();
        if (!fromRight)
        {
            var head = all.Take((int)maxsplit).Cast<object?>().ToList();
            head.Add(string.Join(sep, all.Skip((int)maxsplit)));
            return head;
        }
        var rest = all.Skip(all.Length - (int)maxsplit).Cast<object?>().ToList();
        rest.Insert(0, string.Join(sep, all.Take(all.Length - (int)maxsplit)));
        return rest;
    }

    internal static string Replace(string s, string old, string @new, long count)
    {
        if (count < 0) return old.Length == 0 ? string.Join(@new, ["", .. Py.CodePoints(s), ""]) : s.Replace(old, @new, StringComparison.Ordinal);
        var sb = new StringBuilder();
        int at = 0;
        for (long n = 0; n < count && old.Length > 0; n++)
        {
            int i = s.IndexOf(old, at, StringComparison.Ordinal);
            if (i < 0) break;
            sb.Append(s, at, i - at).Append(@new);
            at = i + old.Length;
        }
        return sb.Append(s, at, s.Length - at).ToString();
    }

    internal static string Title(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool prevCased = false;
        foreach (char c in s)
        {
            sb.Append(prevCased ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c));
            prevCased = char.IsLetter(c);
        }
        return sb.ToString();
    }

    internal static string Capitalize(string s) =>
        s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();
}
