using System.Globalization;
using System.Text;

namespace Lckv.Chat;

/// <summary>A variable scope: the render context at the root, a child per loop iteration and per macro call.</summary>
internal sealed class Scope(Scope? parent)
{
    public Dictionary<string, object?> Vars { get; } = [];
    public Scope? Parent { get; } = parent;

    public bool TryGet(string name, out object? value)
    {
        for (var s = this; s is not null; s = s.Parent)
            if (s.Vars.TryGetValue(name, out value)) return true;
        value = null;
        return false;
    }
}

/// <summary>Executes parsed statements against a scope, writing the output; Python value semantics via <see cref="Py"/>.</summary>
internal sealed class JinjaInterpreter(DateOnly today)
{
    private enum Flow { Normal, Break, Continue }

    /// <summary>Nested macro calls allowed before a render fails (a runaway recursion would otherwise end the process).</summary>
    private const int MaxMacroDepth = 200;
    private int _macroDepth;

    public void Run(List<Stmt> body, Scope root, StringBuilder output)
    {
        root.Vars.TryAdd("raise_exception", new Callable("raise_exception", (a, _) =>
            throw new TemplateRaised(a.Count > 0 ? Py.Str(a[0]) : "")));
        root.Vars.TryAdd("strftime_now", new Callable("strftime_now", (a, _) =>
            Strftime(a.Count > 0 && a[0] is string f ? f : throw new PyError("strftime_now() takes a format string"), today)));
        root.Vars.TryAdd("namespace", new Callable("namespace", (a, kw) =>
        {
            var ns = new Namespace();
            foreach (var arg in a)
            {
                if (arg is not Dictionary<string, object?> d) throw new PyError("namespace() takes a dict or keyword arguments");
                foreach (var (k, v) in d) ns.Attrs[k] = v;
            }
            foreach (var (k, v) in kw) ns.Attrs[k] = v;
            return ns;
        }));
        root.Vars.TryAdd("range", new Callable("range", (a, _) => Range(a)));
        root.Vars.TryAdd("dict", new Callable("dict", (a, kw) =>
        {
            var d = a.Count > 0 && a[0] is Dictionary<string, object?> src ? new Dictionary<string, object?>(src) : [];
            foreach (var (k, v) in kw) d[k] = v;
            return d;
        }));
        Exec(body, root, output);
    }

    /// <summary>raise_exception(msg): the template's own refusal, carried to the caller with its message verbatim.</summary>
    internal sealed class TemplateRaised(string message) : Exception(message);

    private Flow Exec(List<Stmt> body, Scope scope, StringBuilder output)
    {
        foreach (var stmt in body)
        {
            var flow = Exec(stmt, scope, output);
            if (flow != Flow.Normal) return flow;
        }
        return Flow.Normal;
    }

    private Flow Exec(Stmt stmt, Scope scope, StringBuilder output)
    {
        switch (stmt)
        {
            case TextStmt t:
                output.Append(t.Text);
                return Flow.Normal;
            case EmitStmt e:
                output.Append(Py.Str(Eval(e.Value, scope)));
                return Flow.Normal;
            case IfStmt i:
                foreach (var (cond, branch) in i.Branches)
                    if (Py.Truthy(Eval(cond, scope))) return Exec(branch, scope, output);
                return i.Else is null ? Flow.Normal : Exec(i.Else, scope, output);
            case ForStmt f:
                return ExecFor(f, scope, output);
            case SetStmt s:
                ExecSet(s, scope);
                return Flow.Normal;
            case MacroStmt m:
                scope.Vars[m.Name] = MakeMacro(m, scope);
                return Flow.Normal;
            case BreakStmt:
                return Flow.Break;
            case ContinueStmt:
                return Flow.Continue;
            default:
                throw JinjaError.At(stmt.Line, $"unsupported statement {stmt.GetType().Name}");
        }
    }

    private Flow ExecFor(ForStmt f, Scope scope, StringBuilder output)
    {
        var items = Wrap(f.Line, () => Py.Iterate(Eval(f.Iter, scope)));
        if (f.Filter is not null)
        {
            items = items.Where(item =>
            {
                var probe = new Scope(scope);
                Bind(f.Targets, item, probe, f.Line);
                return Py.Truthy(Eval(f.Filter, probe));
            }).ToList();
        }
        var loop = new LoopInfo(items);
        for (int i = 0; i < items.Count; i++)
        {
            var inner = new Scope(scope);
            Bind(f.Targets, items[i], inner, f.Line);
            loop.Index0 = i;
            inner.Vars["loop"] = loop;
            if (Exec(f.Body, inner, output) == Flow.Break) break;
        }
        if (items.Count == 0 && f.Else is not null) return Exec(f.Else, new Scope(scope), output);
        return Flow.Normal;
    }

    private static void Bind(List<string> targets, object? value, Scope scope, int line)
    {
        if (targets.Count == 1)
        {
            scope.Vars[targets[0]] = value;
            return;
        }
        if (value is not List<object?> parts)
            throw JinjaError.At(line, $"cannot unpack a {Py.TypeName(value)} into {targets.Count} names");
        if (parts.Count != targets.Count)
            throw JinjaError.At(line, $"cannot unpack {parts.Count} values into {targets.Count} names");
        for (int i = 0; i < targets.Count; i++) scope.Vars[targets[i]] = parts[i];
    }

    private void ExecSet(SetStmt s, Scope scope)
    {
        object? value;
        if (s.Body is not null)
        {
            var sb = new StringBuilder();
            Exec(s.Body, new Scope(scope), sb);
            value = sb.ToString();
        }
        else value = Eval(s.Value!, scope);
        if (s.Attr is not null)
        {
            if (!scope.TryGet(s.Names[0], out var target) || target is not Namespace ns)
                throw JinjaError.At(s.Line, $"cannot assign attribute '{s.Attr}' on '{s.Names[0]}': only a namespace() takes attributes");
            ns.Attrs[s.Attr] = value;
            return;
        }
        Bind(s.Names, value, scope, s.Line);
    }

    private Callable MakeMacro(MacroStmt m, Scope defining) => new(m.Name, (args, kwargs) =>
    {
        if (args.Count > m.Params.Count) throw new PyError($"macro '{m.Name}' takes {m.Params.Count} arguments, got {args.Count}");
        var scope = new Scope(defining);
        for (int i = 0; i < m.Params.Count; i++)
        {
            var (name, dflt) = m.Params[i];
            scope.Vars[name] = i < args.Count ? args[i]
                : kwargs.TryGetValue(name, out var v) ? v
                : dflt is not null ? Eval(dflt, scope)
                : new Undefined($"'{name}' is undefined");
        }
        foreach (var k in kwargs.Keys)
            if (!m.Params.Any(p => p.Name == k)) throw new PyError($"macro '{m.Name}' takes no keyword argument '{k}'");
        if (_macroDepth >= MaxMacroDepth) throw new PyError($"macro '{m.Name}' nested more than {MaxMacroDepth} calls deep");
        _macroDepth++;
        try
        {
            var sb = new StringBuilder();
            Exec(m.Body, scope, sb);
            return sb.ToString();
        }
        finally { _macroDepth--; }
    });

    private static T Wrap<T>(int line, Func<T> f)
    {
        try { return f(); }
        catch (PyError e) { throw JinjaError.At(line, e.Message); }
    }

    public object? Eval(Expr e, Scope scope)
    {
        try { return EvalCore(e, scope); }
        catch (PyError err) { throw JinjaError.At(e.Line, err.Message); }
        catch (TemplateRaised raised) { throw JinjaError.Raised(e.Line, raised.Message); }
    }

    private object? EvalCore(Expr e, Scope scope)
    {
        switch (e)
        {
            case LiteralExpr l:
                return l.Value;
            case NameExpr n:
                return scope.TryGet(n.Name, out var v) ? v : new Undefined($"'{n.Name}' is undefined");
            case ListExpr l:
                return l.IsTuple ? new PyTuple(l.Items.Select(x => Eval(x, scope))) : l.Items.Select(x => Eval(x, scope)).ToList();
            case DictExpr d:
            {
                var dict = new Dictionary<string, object?>();
                foreach (var (k, val) in d.Items)
                    dict[Eval(k, scope) as string ?? throw new PyError("only string keys are supported in dict literals")] = Eval(val, scope);
                return dict;
            }
            case AttrExpr a:
                return GetAttr(Eval(a.Target, scope), a.Name);
            case ItemExpr i:
                return GetItem(Eval(i.Target, scope), Eval(i.Key, scope));
            case SliceExpr s:
                return Py.Slice(Eval(s.Target, scope), s.Start is null ? null : Eval(s.Start, scope),
                    s.Stop is null ? null : Eval(s.Stop, scope), s.Step is null ? null : Eval(s.Step, scope));
            case CallExpr c:
            {
                var target = Eval(c.Target, scope);
                var (args, kwargs) = EvalArgs(c.Args, scope);
                return target switch
                {
                    Callable f => f.Invoke(args, kwargs),
                    Undefined u => throw new PyError(u.Hint),
                    _ => throw new PyError($"'{Py.TypeName(target)}' object is not callable"),
                };
            }
            case FilterExpr f:
            {
                var value = Eval(f.Value, scope);
                var (args, kwargs) = EvalArgs(f.Args, scope);
                return JinjaFilters.Apply(f.Name, value, args, kwargs, this);
            }
            case TestExpr t:
            {
                var value = Eval(t.Value, scope);
                var (args, _) = EvalArgs(t.Args, scope);
                return JinjaFilters.Test(t.Name, value, args) != t.Negated;
            }
            case BinaryExpr b when b.Op == "and":
            {
                var left = Eval(b.Left, scope);
                return Py.Truthy(left) ? Eval(b.Right, scope) : left;
            }
            case BinaryExpr b when b.Op == "or":
            {
                var left = Eval(b.Left, scope);
                return Py.Truthy(left) ? left : Eval(b.Right, scope);
            }
            case BinaryExpr b:
                return Py.Binary(b.Op, Eval(b.Left, scope), Eval(b.Right, scope));
            case UnaryExpr u:
            {
                var value = Eval(u.Operand, scope);
                return u.Op switch
                {
                    "not" => !Py.Truthy(value),
                    "-" => Py.Negate(value),
                    _ => value is bool or long or double ? (value is bool b ? (b ? 1L : 0L) : value)
                        : throw new PyError($"bad operand type for unary +: '{Py.TypeName(value)}'"),
                };
            }
            case CompareExpr c:
            {
                var left = Eval(c.First, scope);
                foreach (var (op, rightExpr) in c.Rest)
                {
                    var right = Eval(rightExpr, scope);
                    bool ok = op switch
                    {
                        "==" => Py.Equal(left, right),
                        "!=" => !Py.Equal(left, right),
                        "in" => Py.Contains(right, left),
                        "not in" => !Py.Contains(right, left),
                        "<" => Py.Compare(left, right, op) < 0,
                        "<=" => Py.Compare(left, right, op) <= 0,
                        ">" => Py.Compare(left, right, op) > 0,
                        _ => Py.Compare(left, right, op) >= 0,
                    };
                    if (!ok) return false;
                    left = right;
                }
                return true;
            }
            case CondExpr c:
                return Py.Truthy(Eval(c.Cond, scope)) ? Eval(c.Then, scope)
                    : c.Else is null ? new Undefined("the inline if has no else and its condition is false") : Eval(c.Else, scope);
            default:
                throw new PyError($"unsupported expression {e.GetType().Name}");
        }
    }

    private (List<object?>, Dictionary<string, object?>) EvalArgs(Args a, Scope scope)
    {
        var args = a.Positional.Select(x => Eval(x, scope)).ToList();
        var kwargs = new Dictionary<string, object?>();
        foreach (var (k, v) in a.Keyword) kwargs[k] = Eval(v, scope);
        return (args, kwargs);
    }

    /// <summary>Jinja's `x.name`: an attribute (a method of a str or dict) first, then an item; missing is Undefined.</summary>
    public static object? GetAttr(object? target, string name)
    {
        switch (target)
        {
            case Undefined u:
                throw new PyError(u.Hint);
            case Namespace ns:
                return ns.Attrs.TryGetValue(name, out var v) ? v : new Undefined($"'Namespace' has no attribute '{name}'");
            case LoopInfo loop:
                return loop.Get(name);
            case Dictionary<string, object?> d:
                if (JinjaMethods.Dict(d, name) is { } dm) return dm;
                return d.TryGetValue(name, out var dv) ? dv : new Undefined($"'dict object' has no attribute '{name}'");
            case string s:
                return (object?)JinjaMethods.Str(s, name) ?? new Undefined($"'str object' has no attribute '{name}'");
            default:
                return new Undefined($"'{Py.TypeName(target)} object' has no attribute '{name}'");
        }
    }

    /// <summary>Jinja's `x[key]`: an item first, then (for a string key) an attribute; missing is Undefined.</summary>
    public static object? GetItem(object? target, object? key)
    {
        switch (target)
        {
            case Undefined u:
                throw new PyError(u.Hint);
            case Dictionary<string, object?> d when key is string k && d.TryGetValue(k, out var v):
                return v;
            case List<object?> and not PyIterator or string when key is long or bool:
            {
                long i = key is bool b ? (b ? 1 : 0) : (long)key;
                if (target is List<object?> list)
                {
                    if (i < 0) i += list.Count;
                    return i >= 0 && i < list.Count ? list[(int)i] : new Undefined($"list object has no element {key}");
                }
                var cps = Py.CodePoints((string)target);
                if (i < 0) i += cps.Count;
                return i >= 0 && i < cps.Count ? cps[(int)i] : new Undefined($"str object has no element {key}");
            }
        }
        if (key is string name) return GetAttr(target, name);
        return new Undefined($"'{Py.TypeName(target)} object' has no element {Py.Repr(key)}");
    }

    private static List<object?> Range(List<object?> a)
    {
        long[] n = a.Select(x => x is long l ? l : x is bool b ? (b ? 1 : 0) : throw new PyError("range() takes integers")).ToArray();
        var (start, stop, step) = n.Length switch
        {
            1 => (0L, n[0], 1L),
            2 => (n[0], n[1], 1L),
            3 => (n[0], n[1], n[2]),
            _ => throw new PyError("range() takes 1 to 3 arguments"),
        };
        if (step == 0) throw new PyError("range() step must not be zero");
        var list = new List<object?>();
        for (long i = start; step > 0 ? i < stop : i > stop; i += step)
        {
            // the sandbox's MAX_RANGE
            if (list.Count == 100_000) throw new PyError("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
            list.Add(i);
        }
        return list;
    }

    private static readonly string[] _months =
        ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    private static readonly string[] _days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

    /// <summary>Python's date.strftime at midnight of `date` (C locale); `%-d` style (glibc) drops the padding.</summary>
    internal static string Strftime(string format, DateOnly date)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 >= format.Length)
            {
                sb.Append(format[i]);
                continue;
            }
            char c = format[++i];
            bool noPad = false;
            if (c == '-' && i + 1 < format.Length)
            {
                noPad = true;
                c = format[++i];
            }
            string Num(int v, int width) =>
                v.ToString(noPad ? "0" : new string('0', width), CultureInfo.InvariantCulture);
            int weekday = ((int)date.DayOfWeek + 6) % 7; // Monday = 0
            sb.Append(c switch
            {
                'd' => Num(date.Day, 2),
                'e' => noPad ? date.Day.ToString(CultureInfo.InvariantCulture) : date.Day.ToString(CultureInfo.InvariantCulture).PadLeft(2),
                'm' => Num(date.Month, 2),
                'Y' => date.Year.ToString(CultureInfo.InvariantCulture),
                'y' => Num(date.Year % 100, 2),
                'B' => _months[date.Month - 1],
                'b' or 'h' => _months[date.Month - 1][..3],
                'A' => _days[weekday],
                'a' => _days[weekday][..3],
                'j' => Num(date.DayOfYear, 3),
                'u' => (weekday + 1).ToString(CultureInfo.InvariantCulture),
                'w' => ((int)date.DayOfWeek).ToString(CultureInfo.InvariantCulture),
                'H' or 'M' or 'S' => Num(0, 2),
                'I' => Num(12, 2),
                'p' => "AM",
                'F' => date.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture),
                'D' => date.ToString("MM/dd/yy", CultureInfo.InvariantCulture),
                '%' => "%",
                _ => throw new PyError($"strftime_now: unsupported format directive '%{c}'"),
            });
        }
        return sb.ToString();
    }
}
