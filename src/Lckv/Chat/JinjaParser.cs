namespace Lckv.Chat;

/// <summary>Recursive-descent parser from segments to statements, with Jinja2's operator precedence (a filter or test
/// binds tighter than any binary operator, so `'a' + x | trim` filters only x).</summary>
internal sealed class JinjaParser
{
    private readonly List<Segment> _segments;
    private int _next;
    private int _depth;
    private int _loops;     // for loops around the tag being parsed (a macro body starts again from none)

    /// <summary>Deepest nesting of blocks, and of brackets and unary operators in one expression, that parses; deeper
    /// input is an error rather than a stack overflow.</summary>
    internal const int MaxDepth = 100;

    private JinjaParser(List<Segment> segments) => _segments = segments;

    public static List<Stmt> Parse(string source)
    {
        var parser = new JinjaParser(JinjaLexer.Split(source));
        var (body, end) = parser.ParseBody([]);
        if (end is not null) throw JinjaError.At(end.Line, $"unexpected '{end.Next().Text}'");
        return body;
    }

    /// <summary>Statements up to a tag named in `stops` (returned, its reader after the name) or the end (null).</summary>
    private (List<Stmt> Body, TagReader? End) ParseBody(string[] stops)
    {
        if (++_depth > MaxDepth)
            throw JinjaError.At(_next < _segments.Count ? _segments[_next].Line : LastLine(), $"blocks nested more than {MaxDepth} deep");
        try { return ParseBodyCore(stops); }
        finally { _depth--; }
    }

    private (List<Stmt> Body, TagReader? End) ParseBodyCore(string[] stops)
    {
        var body = new List<Stmt>();
        while (_next < _segments.Count)
        {
            var seg = _segments[_next++];
            switch (seg)
            {
                case TextSegment t:
                    body.Add(new TextStmt(t.Text, t.Line));
                    break;
                case OutputSegment o:
                {
                    var r = new TagReader(o.Tokens, o.Line);
                    var e = r.ParseTuple();
                    r.ExpectEnd();
                    body.Add(new EmitStmt(e, o.Line));
                    break;
                }
                case TagSegment tag:
                {
                    var r = new TagReader(tag.Tokens, tag.Line);
                    var name = r.Peek() is { Kind: TokKind.Name } t ? t.Text : throw JinjaError.At(tag.Line, "expected a tag name after '{%'");
                    if (stops.Contains(name)) return (body, r);
                    r.Advance();
                    body.Add(ParseTag(name, r, tag.Line));
                    break;
                }
            }
        }
        if (stops.Length > 0) throw JinjaError.At(LastLine(), $"missing '{{% {stops[^1]} %}}' at the end of the template");
        return (body, null);
    }

    private int LastLine() => _segments.Count == 0 ? 1 : _segments[^1].Line;

    private Stmt ParseTag(string name, TagReader r, int line)
    {
        switch (name)
        {
            case "if":
            {
                var branches = new List<(Expr, List<Stmt>)>();
                var cond = r.ParseExpression();
                r.ExpectEnd();
                while (true)
                {
                    var (body, end) = ParseBody(["elif", "else", "endif"]);
                    branches.Add((cond, body));
                    string word = end!.Next().Text;
                    if (word == "elif")
                    {
                        cond = end.ParseExpression();
                        end.ExpectEnd();
                        continue;
                    }
                    end.ExpectEnd();
                    if (word == "endif") return new IfStmt(branches, null, line);
                    var (elseBody, close) = ParseBody(["endif"]);
                    close!.Next();
                    close.ExpectEnd();
                    return new IfStmt(branches, elseBody, line);
                }
            }
            case "for":
            {
                var targets = new List<string> { r.ExpectName() };
                while (r.TryOp(",")) targets.Add(r.ExpectName());
                if (!r.TryName("in")) throw JinjaError.At(line, "expected 'in' in the for tag");
                var iter = r.ParseTuple(withCondition: false);
                Expr? filter = r.TryName("if") ? r.ParseExpression(withCondition: false) : null;
                if (r.Peek() is { Kind: TokKind.Name, Text: "recursive" }) throw JinjaError.At(line, "recursive for loops are not supported");
                r.ExpectEnd();
                _loops++;
                var (body, end) = ParseBody(["else", "endfor"]);
                _loops--;
                List<Stmt>? elseBody = null;
                if (end!.Next().Text == "else")
                {
                    end.ExpectEnd();
                    (elseBody, end) = ParseBody(["endfor"]);
                    end!.Next();
                }
                end.ExpectEnd();
                return new ForStmt(targets, iter, filter, body, elseBody, line);
            }
            case "set":
            {
                var names = new List<string> { r.ExpectName() };
                string? attr = null;
                if (r.TryOp(".")) attr = r.ExpectName();
                else while (r.TryOp(",")) names.Add(r.ExpectName());
                if (r.TryOp("="))
                {
                    var value = r.ParseTuple();
                    r.ExpectEnd();
                    return new SetStmt(names, attr, value, null, line);
                }
                if (attr is not null || names.Count > 1) throw JinjaError.At(line, "expected '=' in the set tag");
                r.ExpectEnd();
                var (body, end) = ParseBody(["endset"]);
                end!.Next();
                end.ExpectEnd();
                return new SetStmt(names, null, null, body, line);
            }
            case "macro":
            {
                string macro = r.ExpectName();
                var ps = new List<(string, Expr?)>();
                r.ExpectOp("(");
                while (!r.TryOp(")"))
                {
                    if (ps.Count > 0) r.ExpectOp(",");
                    if (r.TryOp(")")) break;
                    string p = r.ExpectName();
                    ps.Add((p, r.TryOp("=") ? r.ParseExpression() : null));
                }
                r.ExpectEnd();
                int loops = _loops;
                _loops = 0;
                var (body, end) = ParseBody(["endmacro"]);
                _loops = loops;
                end!.Next();
                if (end.Peek() is { Kind: TokKind.Name } n && n.Text == macro) end.Advance();
                end.ExpectEnd();
                return new MacroStmt(macro, ps, body, line);
            }
            case "generation":
            {
                // transformers' AssistantTracker tag: marks the assistant's tokens for training masks, renders its body
                r.ExpectEnd();
                var (body, end) = ParseBody(["endgeneration"]);
                end!.Next();
                end.ExpectEnd();
                return new IfStmt([(new LiteralExpr(true, line), body)], null, line);
            }
            case "break" or "continue":
                r.ExpectEnd();
                if (_loops == 0) throw JinjaError.At(line, $"'{name}' outside a for loop");
                return name == "break" ? new BreakStmt(line) : new ContinueStmt(line);
            case "elif" or "else" or "endif" or "endfor" or "endset" or "endmacro" or "endgeneration":
                throw JinjaError.At(line, $"unexpected '{name}'");
            default:
                throw JinjaError.At(line, $"unknown or unsupported tag '{name}'");
        }
    }
}

/// <summary>Reads the tokens of one tag: the expression grammar.</summary>
internal sealed class TagReader(List<Token> tokens, int line)
{
    private int _at;

    private static readonly HashSet<string> _compareOps = ["==", "!=", "<", ">", "<=", ">="];

    public Token? Peek(int ahead = 0) => _at + ahead < tokens.Count ? tokens[_at + ahead] : null;
    public void Advance() => _at++;
    public int Line => Peek()?.Line ?? (tokens.Count > 0 ? tokens[^1].Line : line);

    public Token Next() => _at < tokens.Count ? tokens[_at++] : throw JinjaError.At(Line, "unexpected end of tag");

    public void ExpectEnd()
    {
        if (Peek() is { } t) throw JinjaError.At(t.Line, $"unexpected '{t.Text}'");
    }

    public bool TryOp(string op)
    {
        if (Peek() is { } t && t.IsOp(op))
        {
            _at++;
            return true;
        }
        return false;
    }

    public bool TryName(string name)
    {
        if (Peek() is { } t && t.IsName(name))
        {
            _at++;
            return true;
        }
        return false;
    }

    public void ExpectOp(string op)
    {
        var t = Peek();
        if (t is null || !t.Value.IsOp(op)) throw JinjaError.At(Line, $"expected '{op}', got {Describe(t)}");
        _at++;
    }

    public string ExpectName()
    {
        var t = Peek();
        if (t is not { Kind: TokKind.Name }) throw JinjaError.At(Line, $"expected a name, got {Describe(t)}");
        _at++;
        return t.Value.Text;
    }

    private static string Describe(Token? t) => t is null ? "the end of the tag" : $"'{t.Value.Text}'";

    /// <summary>An expression, or a tuple when commas follow (`{{ a, b }}`, `set x = 1, 2`).</summary>
    public Expr ParseTuple(bool withCondition = true)
    {
        int ln = Line;
        var first = ParseExpression(withCondition);
        if (Peek() is not { } t || !t.IsOp(",")) return first;
        var items = new List<Expr> { first };
        while (TryOp(","))
        {
            if (Peek() is null) break;
            items.Add(ParseExpression(withCondition));
        }
        return new ListExpr(items, true, ln);
    }

    public Expr ParseExpression(bool withCondition = true)
    {
        Deeper();
        try { return withCondition ? ParseCondition() : ParseOr(); }
        finally { _depth--; }
    }

    private int _depth;

    private void Deeper()
    {
        if (++_depth > JinjaParser.MaxDepth) throw JinjaError.At(Line, $"expression nested more than {JinjaParser.MaxDepth} deep");
    }

    private Expr ParseCondition()
    {
        var e = ParseOr();
        while (Peek() is { } t && t.IsName("if"))
        {
            _at++;
            var cond = ParseOr();
            Expr? other = TryName("else") ? ParseCondition() : null;
            e = new CondExpr(cond, e, other, t.Line);
        }
        return e;
    }

    private Expr ParseOr()
    {
        var e = ParseAnd();
        while (Peek() is { } t && t.IsName("or"))
        {
            _at++;
            e = new BinaryExpr("or", e, ParseAnd(), t.Line);
        }
        return e;
    }

    private Expr ParseAnd()
    {
        var e = ParseNot();
        while (Peek() is { } t && t.IsName("and"))
        {
            _at++;
            e = new BinaryExpr("and", e, ParseNot(), t.Line);
        }
        return e;
    }

    private Expr ParseNot()
    {
        if (Peek() is { } t && t.IsName("not"))
        {
            _at++;
            Deeper();
            try { return new UnaryExpr("not", ParseNot(), t.Line); }
            finally { _depth--; }
        }
        return ParseCompare();
    }

    private Expr ParseCompare()
    {
        int ln = Line;
        var first = ParseMath1();
        var rest = new List<(string, Expr)>();
        while (Peek() is { } t)
        {
            if (t.Kind == TokKind.Op && _compareOps.Contains(t.Text))
            {
                _at++;
                rest.Add((t.Text, ParseMath1()));
            }
            else if (t.IsName("in"))
            {
                _at++;
                rest.Add(("in", ParseMath1()));
            }
            else if (t.IsName("not") && Peek(1) is { } u && u.IsName("in"))
            {
                _at += 2;
                rest.Add(("not in", ParseMath1()));
            }
            else break;
        }
        return rest.Count == 0 ? first : new CompareExpr(first, rest, ln);
    }

    private Expr ParseMath1()
    {
        var e = ParseConcat();
        while (Peek() is { Kind: TokKind.Op } t && t.Text is "+" or "-")
        {
            _at++;
            e = new BinaryExpr(t.Text, e, ParseConcat(), t.Line);
        }
        return e;
    }

    private Expr ParseConcat()
    {
        var e = ParseMath2();
        while (Peek() is { } t && t.IsOp("~"))
        {
            _at++;
            e = new BinaryExpr("~", e, ParseMath2(), t.Line);
        }
        return e;
    }

    private Expr ParseMath2()
    {
        var e = ParsePow();
        while (Peek() is { Kind: TokKind.Op } t && t.Text is "*" or "/" or "//" or "%")
        {
            _at++;
            e = new BinaryExpr(t.Text, e, ParsePow(), t.Line);
        }
        return e;
    }

    private Expr ParsePow()
    {
        var e = ParseUnary(true);
        while (Peek() is { } t && t.IsOp("**"))
        {
            _at++;
            e = new BinaryExpr("**", e, ParseUnary(true), t.Line);
        }
        return e;
    }

    private Expr ParseUnary(bool withFilter)
    {
        Expr e;
        if (Peek() is { Kind: TokKind.Op } t && t.Text is "-" or "+")
        {
            _at++;
            Deeper();
            try { e = new UnaryExpr(t.Text, ParseUnary(false), t.Line); }
            finally { _depth--; }
        }
        else e = ParsePostfix(ParsePrimary());
        return withFilter ? ParseFilters(e) : e;
    }

    private Expr ParsePrimary()
    {
        var t = Next();
        switch (t.Kind)
        {
            case TokKind.Name:
                return t.Text switch
                {
                    "true" or "True" => new LiteralExpr(true, t.Line),
                    "false" or "False" => new LiteralExpr(false, t.Line),
                    "none" or "None" => new LiteralExpr(null, t.Line),
                    _ => new NameExpr(t.Text, t.Line),
                };
            case TokKind.String:
            {
                string s = (string)t.Value!;
                while (Peek() is { Kind: TokKind.String } more)
                {
                    _at++;
                    s += (string)more.Value!;
                }
                return new LiteralExpr(s, t.Line);
            }
            case TokKind.Int or TokKind.Float:
                return new LiteralExpr(t.Value, t.Line);
        }
        switch (t.Text)
        {
            case "(":
            {
                if (TryOp(")")) return new ListExpr([], true, t.Line);
                var first = ParseExpression();
                if (TryOp(")")) return first;
                var items = new List<Expr> { first };
                while (TryOp(","))
                {
                    if (Peek() is { } c && c.IsOp(")")) break;
                    items.Add(ParseExpression());
                }
                ExpectOp(")");
                return new ListExpr(items, true, t.Line);
            }
            case "[":
            {
                var items = new List<Expr>();
                while (!TryOp("]"))
                {
                    if (items.Count > 0)
                    {
                        ExpectOp(",");
                        if (TryOp("]")) break;
                    }
                    items.Add(ParseExpression());
                }
                return new ListExpr(items, false, t.Line);
            }
            case "{":
            {
                var items = new List<(Expr, Expr)>();
                while (!TryOp("}"))
                {
                    if (items.Count > 0)
                    {
                        ExpectOp(",");
                        if (TryOp("}")) break;
                    }
                    var key = ParseExpression();
                    ExpectOp(":");
                    items.Add((key, ParseExpression()));
                }
                return new DictExpr(items, t.Line);
            }
        }
        throw JinjaError.At(t.Line, $"unexpected '{t.Text}'");
    }

    private Expr ParsePostfix(Expr e)
    {
        while (Peek() is { Kind: TokKind.Op } t)
        {
            if (t.Text == ".")
            {
                _at++;
                var n = Next();
                e = n.Kind switch
                {
                    TokKind.Name => new AttrExpr(e, n.Text, n.Line),
                    TokKind.Int => new ItemExpr(e, new LiteralExpr(n.Value, n.Line), n.Line),
                    _ => throw JinjaError.At(n.Line, $"expected an attribute name after '.', got '{n.Text}'"),
                };
            }
            else if (t.Text == "[")
            {
                _at++;
                e = ParseSubscript(e, t.Line);
            }
            else if (t.Text == "(")
            {
                _at++;
                e = new CallExpr(e, ParseArgs(), t.Line);
            }
            else break;
        }
        return e;
    }

    private Expr ParseSubscript(Expr target, int ln)
    {
        Expr? start = null, stop = null, step = null;
        if (Peek() is { } t0 && !t0.IsOp(":")) start = ParseExpression();
        if (TryOp("]")) return new ItemExpr(target, start ?? throw JinjaError.At(ln, "empty subscript"), ln);
        ExpectOp(":");
        if (Peek() is { } t1 && !t1.IsOp(":") && !t1.IsOp("]")) stop = ParseExpression();
        if (TryOp(":") && Peek() is { } t2 && !t2.IsOp("]")) step = ParseExpression();
        ExpectOp("]");
        return new SliceExpr(target, start, stop, step, ln);
    }

    /// <summary>Call arguments after '(' through ')': positional, then name=value.</summary>
    private Args ParseArgs()
    {
        var pos = new List<Expr>();
        var kw = new List<(string, Expr)>();
        while (!TryOp(")"))
        {
            if (pos.Count + kw.Count > 0)
            {
                ExpectOp(",");
                if (TryOp(")")) break;
            }
            if (Peek() is { Kind: TokKind.Name } n && Peek(1) is { } eq && eq.IsOp("="))
            {
                _at += 2;
                kw.Add((n.Text, ParseExpression()));
            }
            else
            {
                if (kw.Count > 0) throw JinjaError.At(Line, "a positional argument follows a keyword argument");
                pos.Add(ParseExpression());
            }
        }
        return new Args(pos, kw);
    }

    private Expr ParseFilters(Expr e)
    {
        while (Peek() is { } t)
        {
            if (t.IsOp("|"))
            {
                _at++;
                string name = ExpectName();
                if (!JinjaFilters.FilterNames.Contains(name)) throw JinjaError.At(t.Line, $"no filter named '{name}'");
                var args = TryOp("(") ? ParseArgs() : Args.None;
                e = new FilterExpr(e, name, args, t.Line);
            }
            else if (t.IsName("is"))
            {
                _at++;
                bool negated = TryName("not");
                string name = ExpectName();
                if (!JinjaFilters.TestNames.Contains(name)) throw JinjaError.At(t.Line, $"no test named '{name}'");
                Args args = Args.None;
                if (TryOp("(")) args = ParseArgs();
                else if (Peek() is { } a && TakesBareArgument(a))
                    args = new Args([ParsePostfix(ParsePrimary())], []);
                e = new TestExpr(e, name, args, negated, t.Line);
            }
            else if (t.IsOp("("))
            {
                _at++;
                e = new CallExpr(e, ParseArgs(), t.Line);
            }
            else break;
        }
        return e;
    }

    /// <summary>`x is divisibleby 3`: a test takes one bare argument when a value, not a keyword, follows.</summary>
    private static bool TakesBareArgument(Token a) => a.Kind switch
    {
        TokKind.String or TokKind.Int or TokKind.Float => true,
        TokKind.Name => a.Text is not ("else" or "or" or "and" or "if" or "in" or "not" or "is"),
        _ => a.Text is "[" or "{",
    };
}
