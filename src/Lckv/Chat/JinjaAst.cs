namespace Lckv.Chat;

/// <summary>A statement of a parsed template.</summary>
internal abstract record Stmt(int Line);
internal sealed record TextStmt(string Text, int Line) : Stmt(Line);
internal sealed record EmitStmt(Expr Value, int Line) : Stmt(Line);
internal sealed record IfStmt(List<(Expr Cond, List<Stmt> Body)> Branches, List<Stmt>? Else, int Line) : Stmt(Line);
internal sealed record ForStmt(List<string> Targets, Expr Iter, Expr? Filter, List<Stmt> Body, List<Stmt>? Else, int Line) : Stmt(Line);
/// <summary>`set name = v`, `set a, b = v`, `set ns.attr = v`, or the block form `set name %}...{% endset`.</summary>
internal sealed record SetStmt(List<string> Names, string? Attr, Expr? Value, List<Stmt>? Body, int Line) : Stmt(Line);
internal sealed record MacroStmt(string Name, List<(string Name, Expr? Default)> Params, List<Stmt> Body, int Line) : Stmt(Line);
internal sealed record BreakStmt(int Line) : Stmt(Line);
internal sealed record ContinueStmt(int Line) : Stmt(Line);

/// <summary>An expression of a parsed template.</summary>
internal abstract record Expr(int Line);
internal sealed record LiteralExpr(object? Value, int Line) : Expr(Line);
internal sealed record NameExpr(string Name, int Line) : Expr(Line);
internal sealed record ListExpr(List<Expr> Items, bool IsTuple, int Line) : Expr(Line);
internal sealed record DictExpr(List<(Expr Key, Expr Value)> Items, int Line) : Expr(Line);
internal sealed record AttrExpr(Expr Target, string Name, int Line) : Expr(Line);
internal sealed record ItemExpr(Expr Target, Expr Key, int Line) : Expr(Line);
internal sealed record SliceExpr(Expr Target, Expr? Start, Expr? Stop, Expr? Step, int Line) : Expr(Line);
internal sealed record Args(List<Expr> Positional, List<(string Name, Expr Value)> Keyword)
{
    public static readonly Args None = new([], []);
}
internal sealed record CallExpr(Expr Target, Args Args, int Line) : Expr(Line);
internal sealed record FilterExpr(Expr Value, string Name, Args Args, int Line) : Expr(Line);
internal sealed record TestExpr(Expr Value, string Name, Args Args, bool Negated, int Line) : Expr(Line);
internal sealed record BinaryExpr(string Op, Expr Left, Expr Right, int Line) : Expr(Line);
internal sealed record UnaryExpr(string Op, Expr Operand, int Line) : Expr(Line);
/// <summary>A comparison chain, `a < b <= c`, Python style (each pair compared, all must hold).</summary>
internal sealed record CompareExpr(Expr First, List<(string Op, Expr Right)> Rest, int Line) : Expr(Line);
internal sealed record CondExpr(Expr Cond, Expr Then, Expr? Else, int Line) : Expr(Line);
