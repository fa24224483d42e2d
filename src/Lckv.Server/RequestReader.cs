using System.Text.Json;

namespace Lckv.Server;

/// <summary>A request the server refuses with a 400 naming the offending field.</summary>
public sealed class BadRequestException(string message, string? param = null, string code = "invalid_request") : Exception(message)
{
    public string? Param { get; } = param;
    public string Code { get; } = code;
}

/// <summary>Typed access to the fields of a JSON request object: absent and null read as null, a wrong type is a
/// 400 naming the field, unknown fields are ignored.</summary>
internal readonly struct RequestReader(JsonElement root)
{
    public JsonElement Root { get; } = root;

    public static RequestReader Parse(byte[] body)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(body, new JsonDocumentOptions { MaxDepth = 64 }); }
        catch (JsonException e) { throw new BadRequestException($"the body is not valid JSON: {e.Message}", code: "invalid_json"); }
        if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new BadRequestException("the body must be a JSON object", code: "invalid_json");
        return new RequestReader(doc.RootElement);
    }

    public JsonElement? Field(string name)
        => Root.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    public string? String(string name)
    {
        if (Field(name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.String) throw Wrong(name, "a string");
        return Text(v, name);
    }

    /// <summary>A JSON string's text; a string that is not valid Unicode (a lone surrogate escape) is a bad request.</summary>
    public static string Text(JsonElement v, string name)
    {
        try { return v.GetString()!; }
        catch (InvalidOperationException) { throw new BadRequestException($"'{name}' is not valid Unicode text", name, "invalid_value"); }
    }

    public bool? Bool(string name)
    {
        if (Field(name) is not { } v) return null;
        return v.ValueKind switch { JsonValueKind.True => true, JsonValueKind.False => false, _ => throw Wrong(name, "a boolean") };
    }

    public int? Int(string name, int min = int.MinValue, int max = int.MaxValue)
    {
        if (Field(name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long x)) throw Wrong(name, "an integer");
        if (x < min || x > max) throw new BadRequestException($"'{name}' must be in [{min}, {max}], got {x}", name);
        return (int)x;
    }

    public float? Float(string name)
    {
        if (Field(name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number) throw Wrong(name, "a number");
        double x = v.GetDouble();
        if (!double.IsFinite(x)) throw Wrong(name, "a finite number");
        return (float)x;
    }

    /// <summary>A seed: any JSON integer, negative ones taken as their 64-bit pattern.</summary>
    public ulong? Seed(string name)
    {
        if (Field(name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number) throw Wrong(name, "an integer");
        if (v.TryGetUInt64(out ulong u)) return u;
        if (v.TryGetInt64(out long l)) return unchecked((ulong)l);
        throw Wrong(name, "a 64-bit integer");
    }

    /// <summary>A string or a list of strings (OpenAI's stop).</summary>
    public IReadOnlyList<string> Strings(string name)
    {
        if (Field(name) is not { } v) return [];
        if (v.ValueKind == JsonValueKind.String) return [Text(v, name)];
        if (v.ValueKind != JsonValueKind.Array) throw Wrong(name, "a string or a list of strings");
        var list = new List<string>();
        foreach (var e in v.EnumerateArray())
        {
            if (e.ValueKind != JsonValueKind.String) throw Wrong(name, "a string or a list of strings");
            list.Add(Text(e, name));
        }
        return list;
    }

    /// <summary>A list of token ids.</summary>
    public static int[] Ids(JsonElement v, string name)
    {
        if (v.ValueKind != JsonValueKind.Array) throw Wrong(name, "a list of token ids");
        var ids = new int[v.GetArrayLength()];
        int i = 0;
        foreach (var e in v.EnumerateArray())
        {
            if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out int id) || id < 0) throw Wrong(name, "a list of token ids");
            ids[i++] = id;
        }
        return ids;
    }

    public static BadRequestException Wrong(string name, string what) => new($"'{name}' must be {what}", name, "invalid_type");
}
