using Lckv.Chat;

namespace Lckv.Server;

/// <summary>How the HTTP server listens and what it accepts.</summary>
public sealed record ServerOptions
{
    /// <summary>Address to bind: an IP address, or "localhost".</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>Port to bind; 0 picks a free one (see <see cref="LckvServer.Address"/>).</summary>
    public int Port { get; init; } = 8080;
    /// <summary>When set, every /v1 route and /metrics need "Authorization: Bearer {ApiKey}".</summary>
    public string? ApiKey { get; init; }
    /// <summary>The model id /v1/models lists and responses name.</summary>
    public string ModelName { get; init; } = "lckv";
    /// <summary>Most requests waiting for admission; more are refused with 429.</summary>
    public int MaxQueue { get; init; } = 64;
    /// <summary>Largest request body; a larger one is refused with 413.</summary>
    public long MaxBodyBytes { get; init; } = 4L << 20;
    /// <summary>Tokens a completion generates when the request names no max_tokens (OpenAI's default).</summary>
    public int DefaultCompletionTokens { get; init; } = 16;
    /// <summary>Whether a text prompt gets the tokenizer's BOS token in front.</summary>
    public bool AddBos { get; init; } = true;

    /// <summary>
    /// The chat seam: renders a conversation into the prompt text (the model's chat template). Null for a model without
    /// a template; /v1/chat/completions then answers 400 "this model has no chat template".
    /// </summary>
    public Func<IReadOnlyList<ChatMessage>, string>? ChatPromptRenderer { get; init; }
}
