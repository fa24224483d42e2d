using System.Collections;
using System.Globalization;
using System.Numerics;
using System.Text;
using System.Text.Json;
using Lckv.Formats;

namespace Lckv.Chat;

/// <summary>One turn of a conversation, the simple form most requests have.</summary>
public sealed record ChatMessage(string Role, string Content);

/// <summary>The variables a chat template is rendered with, as Hugging Face's apply_chat_template passes them.</summary>
public sealed class ChatTemplateInput
{
    /// <summary>The conversation as role/content pairs (each a dict with keys "role" and "content").</summary>
    public IReadOnlyList<ChatMessage> Messages { get; init; } = [];

    /// <summary>The conversation as JSON (an array of objects, tool calls and any other fields kept); when set it is
    /// used instead of <see cref="Messages"/>.</summary>
    public JsonElement? MessagesJson { get; init; }

    public bool AddGenerationPrompt { get; init; }
    public string BosToken { get; init; } = "";
    public string EosToken { get; init; } = "";

    /// <summary>The date strftime_now() formats; today (UTC) when null.</summary>
    public DateOnly? Date { get; init; }

    /// <summary>Further render variables (tools, documents, a template's own keyword arguments): JsonElement, string,
    /// bool, integer, floating-point, null, dictionaries with string keys, or sequences of these. A null value is
    /// Python's None, so the variable is defined; leave a name out to keep it undefined.</summary>
    public IReadOnlyDictionary<string, object?> Variables { get; init; } = new Dictionary<string, object?>();
}

/// <summary>A chat template failed: bad syntax, a runtime error, or the template's own raise_exception.</summary>
public sealed class ChatTemplateException : LckvException
{
    internal ChatTemplateException(string message, string reason, int? line, bool raisedByTemplate) : base(message)
    {
        Reason = reason;
        Line = line;
        RaisedByTemplate = raisedByTemplate;
    }

    /// <summary>The problem without its location; for raise_exception, the template's message verbatim.</summary>
    public string Reason { get; }

    /// <summary>The 1-based template line, when known.</summary>
    public int? Line { get; }

    /// <summary>True when the template itself refused the input (raise_exception), e.g. roles that do not alternate.</summary>
    public bool RaisedByTemplate { get; }
}

internal static class JinjaError
{
    public static ChatTemplateException At(int line, string reason) =>
        new($"chat template line {line}: {reason}", reason, line, false);

    public static ChatTemplateException Raised(int line, string reason) =>
        new($"chat template refused the input (raise_exception at line {line}): {reason}", reason, line, true);
}

/// <summary>
/// A Hugging Face chat template (the Jinja source in tokenizer_config.json's chat_template or GGUF's
/// tokenizer.chat_template), parsed once and rendered per request with the subset of Jinja2 that chat templates use,
/// configured as transformers configures it (docs/chat-templates.md). Parse once; Render may run on many threads at once.
/// </summary>
public sealed class ChatTemplate
{
    private readonly List<Stmt> _body;

    private ChatTemplate(string source, List<Stmt> body)
    {
        Source = source;
        _body = body;
    }

    /// <summary>The template text as given.</summary>
    public string Source { get; }

    /// <summary>Parses a template; a syntax error is a <see cref="ChatTemplateException"/> naming the line.</summary>
    public static ChatTemplate Parse(string source) => new(source, JinjaParser.Parse(source));

    /// <summary>The prompt text for one conversation. The template's failures (raise_exception included) are a
    /// <see cref="ChatTemplateException"/>; input it cannot take (a variable of an unknown type) an <see cref="LckvException"/>.</summary>
    public string Render(ChatTemplateInput input)
    {
        var root = new Scope(null);
        if (input.MessagesJson is { ValueKind: not JsonValueKind.Array } bad)
            throw new LckvException($"chat messages must be a JSON array, got {bad.ValueKind}");
        root.Vars["messages"] = input.MessagesJson is { } json ? FromJson(json)
            : input.Messages.Select(m => (object?)new Dictionary<string, object?> { ["role"] = m.Role, ["content"] = m.Content }).ToList();
        root.Vars["add_generation_prompt"] = input.AddGenerationPrompt;
        root.Vars["bos_token"] = input.BosToken;
        root.Vars["eos_token"] = input.EosToken;
        foreach (var (name, value) in input.Variables)
        {
            if (root.Vars.ContainsKey(name))
                throw new LckvException($"chat template variable '{name}' is set by the renderer and cannot be passed again");
            root.Vars[name] = FromDotNet(value);
        }
        var output = new StringBuilder();
        new JinjaInterpreter(input.Date ?? DateOnly.FromDateTime(DateTime.UtcNow)).Run(_body, root, output);
        return output.ToString();
    }

    /// <summary>The template of a checkpoint folder (chat_template.jinja, else tokenizer_config.json's chat_template:
    /// a string, or the list of named templates, taking "default") or of a GGUF file (tokenizer.chat_template); null when
    /// it has none.</summary>
    public static ChatTemplate? FromCheckpoint(string path) => ReadSource(path) is { } source ? Parse(source) : null;

    /// <summary>Like <see cref="FromCheckpoint"/>, but a model without a template is an error: chat requests need one.</summary>
    public static ChatTemplate Load(string path) => FromCheckpoint(path)
        ?? throw new LckvException($"'{path}' has no chat template (chat_template in tokenizer_config.json, or "
            + "tokenizer.chat_template in a GGUF file); chat requests need one");

    /// <summary>The template text of a checkpoint folder or GGUF file, or null when it has none.</summary>
    public static string? ReadSource(string path)
    {
        if (File.Exists(path))
        {
            if (!GgufFile.IsGguf(path))
                throw new LckvException($"'{path}' is a file but not a GGUF file; expected a checkpoint folder or a .gguf file");
            using var gguf = GgufFile.Open(path);
            if (!gguf.Metadata.TryGetValue("tokenizer.chat_template", out var v)) return null;
            return v.Value as string ?? throw new LckvException($"'{path}': tokenizer.chat_template is a {v.TypeName}, expected a string");
        }
        if (!Directory.Exists(path)) throw new LckvException($"model '{path}' does not exist");
        var jinja = Path.Combine(path, "chat_template.jinja");
        if (File.Exists(jinja)) return File.ReadAllText(jinja, Encoding.UTF8);
        var config = Path.Combine(path, "tokenizer_config.json");
        if (!File.Exists(config)) return null;
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(config)); }
        catch (JsonException e) { throw new LckvException($"'{config}' is not valid JSON: {e.Message}"); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("chat_template", out var t)
                || t.ValueKind == JsonValueKind.Null) return null;
            if (t.ValueKind == JsonValueKind.String) return t.GetString();
            if (t.ValueKind == JsonValueKind.Array)
            {
                foreach (var item in t.EnumerateArray())
                    if (item.ValueKind == JsonValueKind.Object && item.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String
                        && n.GetString() == "default" && item.TryGetProperty("template", out var tt) && tt.ValueKind == JsonValueKind.String)
                        return tt.GetString();
                throw new LckvException($"'{config}': chat_template lists named templates but none is named \"default\"");
            }
            throw new LckvException($"'{config}': chat_template is a {t.ValueKind}, expected a string or a list of named templates");
        }
    }

    /// <summary>The bos_token and eos_token strings transformers renders a checkpoint's template with: tokenizer_config.json's
    /// (else special_tokens_map.json's) bos_token / eos_token, a string or an {"content": ...} object; in a GGUF file the
    /// tokens at tokenizer.ggml.bos_token_id / eos_token_id. Null where there is none.</summary>
    public static (string? Bos, string? Eos) ReadSpecialTokens(string path)
    {
        if (File.Exists(path))
        {
            using var gguf = GgufFile.Open(path);
            var tokens = gguf.Metadata.TryGetValue("tokenizer.ggml.tokens", out var t) ? t.ArrayOf<string>() : null;
            string? Token(string key) => tokens is not null && gguf.Metadata.TryGetValue(key, out var v) && v.TryGetInteger(out long id)
                && id >= 0 && id < tokens.Length ? tokens[id] : null;
            return (Token("tokenizer.ggml.bos_token_id"), Token("tokenizer.ggml.eos_token_id"));
        }
        string? bos = null, eos = null;
        foreach (var name in (string[])["tokenizer_config.json", "special_tokens_map.json"])
        {
            var file = Path.Combine(path, name);
            if (!File.Exists(file)) continue;
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllBytes(file));
                if (doc.RootElement.ValueKind != JsonValueKind.Object) continue;
                bos ??= TokenText(doc.RootElement, "bos_token");
                eos ??= TokenText(doc.RootElement, "eos_token");
            }
            catch (JsonException e) { throw new LckvException($"'{file}' is not valid JSON: {e.Message}"); }
        }
        return (bos, eos);
    }

    private static string? TokenText(JsonElement root, string key) =>
        !root.TryGetProperty(key, out var v) ? null
        : v.ValueKind == JsonValueKind.String ? v.GetString()
        : v.ValueKind == JsonValueKind.Object && v.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String ? c.GetString()
        : null;

    /// <summary>A JSON value as a template value: objects are dicts (key order kept), integers are ints (past 64 bits
    /// too, as Python's json keeps them), other numbers floats.</summary>
    internal static object? FromJson(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => e.EnumerateObject().Aggregate(new Dictionary<string, object?>(), (d, p) =>
        {
            d[p.Name] = FromJson(p.Value);
            return d;
        }),
        JsonValueKind.Array => e.EnumerateArray().Select(FromJson).ToList(),
        JsonValueKind.String => JsonString(e),
        JsonValueKind.Number => e.TryGetInt64(out long l) ? (object)l
            : e.GetRawText() is var raw && raw.AsSpan().IndexOfAny(".eE") < 0 ? BigInteger.Parse(raw, CultureInfo.InvariantCulture)
            : e.GetDouble(),
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => null,
    };

    private static string JsonString(JsonElement e)
    {
        try { return e.GetString()!; }
        catch (InvalidOperationException)
        {
            throw new LckvException($"chat template input: a JSON string holds an unpaired surrogate escape, which is not text ({e.GetRawText()})");
        }
    }

    internal static object? FromDotNet(object? v) => v switch
    {
        null => null,
        JsonElement e => FromJson(e),
        string or bool or long or double => v,
        int i => (long)i,
        short s => (long)s,
        byte b => (long)b,
        uint u => (long)u,
        float f => (double)f,
        decimal m => (double)m,
        IDictionary<string, object?> d => d.ToDictionary(kv => kv.Key, kv => FromDotNet(kv.Value)),
        IDictionary d => d.Keys.Cast<object>().ToDictionary(
            k => k as string ?? throw new LckvException("chat template variables: dictionary keys must be strings"), k => FromDotNet(d[k])),
        IEnumerable seq => seq.Cast<object?>().Select(FromDotNet).ToList(),
        _ => throw new LckvException($"chat template variables: a {v.GetType().Name} cannot be passed to a template"),
    };
}
