using System.Net;
using System.Text;
using System.Text.Json;
using Lckv.Chat;
using Lckv.Formats;
using Lckv.Generation;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Lckv.Server;

/// <summary>
/// The OpenAI-compatible HTTP server over a <see cref="BatchScheduler"/>: /health, /v1/models, /v1/completions,
/// /v1/chat/completions (through <see cref="ServerOptions.ChatPromptRenderer"/>), /tokenize and /detokenize in
/// llama.cpp's shapes, /metrics (the scheduler's Prometheus metrics, in the text format), /v1/lckv/status (the same
/// live numbers as JSON, for the chat page) and the chat page itself at /. Errors are OpenAI-style JSON.
/// </summary>
public sealed class LckvServer : IAsyncDisposable
{
    private static readonly JsonSerializerOptions _json = new() { DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.Never };
    private readonly WebApplication _app;
    private readonly ServerOptions _options;
    private readonly TextTokenizer? _tokenizer;
    private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    private LckvServer(WebApplication app, BatchScheduler scheduler, TextTokenizer? tokenizer, ServerOptions options)
    {
        _app = app;
        Scheduler = scheduler;
        _tokenizer = tokenizer;
        _options = options;
    }

    public BatchScheduler Scheduler { get; }
    /// <summary>The address the server listens on (the port picked when <see cref="ServerOptions.Port"/> is 0).</summary>
    public Uri Address { get; private set; } = null!;

    /// <summary>Starts listening. The scheduler is the server's from now on: disposing the server disposes it.</summary>
    public static async Task<LckvServer> StartAsync(BatchScheduler scheduler, TextTokenizer? tokenizer, ServerOptions options, ILoggerProvider? log = null)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        if (log is not null) builder.Logging.AddProvider(log);
        var address = options.Host.Equals("localhost", StringComparison.OrdinalIgnoreCase) ? IPAddress.Loopback
            : IPAddress.TryParse(options.Host, out var ip) ? ip : throw new LckvException($"the host must be an IP address or localhost, got '{options.Host}'");
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Listen(address, options.Port);
            k.Limits.MaxRequestBodySize = null; // the body reader enforces MaxBodyBytes with an OpenAI-style 413
            k.AddServerHeader = false;
        });
        var app = builder.Build();
        var server = new LckvServer(app, scheduler, tokenizer, options);
        server.Map(app);
        try { await app.StartAsync().ConfigureAwait(false); }
        catch (IOException e) { throw new LckvException($"cannot listen on {options.Host}:{options.Port}: {e.Message}"); }
        var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        server.Address = new Uri(bound.Replace("[::]", "localhost", StringComparison.Ordinal));
        return server;
    }

    public async ValueTask DisposeAsync()
    {
        Scheduler.Dispose(); // ends every job, so open streams finish
        await _app.StopAsync().ConfigureAwait(false);
        await _app.DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>Waits until the host stops (Ctrl-C, SIGTERM).</summary>
    public Task WaitForShutdownAsync(CancellationToken token = default) => _app.WaitForShutdownAsync(token);

    private void Map(WebApplication app)
    {
        app.Use(async (ctx, next) =>
        {
            try
            {
                // as llama.cpp does, /metrics needs the key too (a scraper sends it as a bearer token); /health stays open
                if (_options.ApiKey is { } key && (ctx.Request.Path.StartsWithSegments("/v1") || ctx.Request.Path.StartsWithSegments("/metrics"))
                    && !Authorized(ctx, key))
                {
                    await Error(ctx, 401, "invalid or missing API key (send 'Authorization: Bearer <key>')", "invalid_api_key").ConfigureAwait(false);
                    return;
                }
                await next(ctx).ConfigureAwait(false);
            }
            catch (BadRequestException e) { await Error(ctx, 400, e.Message, e.Code, param: e.Param).ConfigureAwait(false); }
            catch (RejectedException e) { await Error(ctx, e.Status, e.Message, e.Code, e.Type).ConfigureAwait(false); }
            catch (BodyTooLargeException e) { await Error(ctx, 413, e.Message, "request_too_large").ConfigureAwait(false); }
            catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested) { }
        });
        app.MapGet("/", ChatPage.Serve);
        app.MapGet("/index.html", ChatPage.Serve);
        app.MapGet("/health", () => Results.Json(new { status = "ok" }));
        app.MapGet("/v1/models", () => Results.Json(new
        {
            @object = "list",
            data = new[] { new { id = _options.ModelName, @object = "model", created = _created, owned_by = "lckv", context_length = Scheduler.Engine.Model.ContextLength } },
        }));
        app.MapPost("/v1/completions", Completions);
        app.MapPost("/v1/chat/completions", ChatCompletions);
        app.MapGet("/metrics", async ctx =>
        {
            ctx.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
            await Scheduler.Metrics.Registry.CollectAndExportAsTextAsync(ctx.Response.Body, ctx.RequestAborted).ConfigureAwait(false);
        });
        app.MapGet("/v1/lckv/status", Status);
        app.MapPost("/tokenize", Tokenize);
        app.MapPost("/apply-template", ApplyTemplate);
        app.MapPost("/detokenize", Detokenize);
        app.MapFallback(ctx => Error(ctx, 404, $"no route {ctx.Request.Method} {ctx.Request.Path}", "not_found"));
    }

    /// <summary>What the chat page polls: the model, whether chat works, queue and KV use read live.</summary>
    private IResult Status()
    {
        var pool = Scheduler.Engine.Cache.Pool;
        return Results.Json(new
        {
            model = _options.ModelName,
            context_length = Scheduler.Engine.Model.ContextLength,
            chat_template = _options.ChatPromptRenderer is not null,
            tokenizer = _tokenizer is not null,
            requests = new { running = Scheduler.Running, waiting = Scheduler.Waiting },
            kv = new
            {
                block_tokens = pool.Layout.BlockSize,
                blocks_used = pool.UsedBlocks, blocks_free = pool.FreeBlocks, blocks_total = pool.TotalBlocks,
                bytes_used = pool.BytesInUse, bytes_total = pool.CapacityBytes,
            },
        }, _json);
    }

    private static bool Authorized(HttpContext ctx, string key)
    {
        string header = ctx.Request.Headers.Authorization.ToString();
        const string bearer = "Bearer ";
        if (!header.StartsWith(bearer, StringComparison.OrdinalIgnoreCase)) return false;
        var given = Encoding.UTF8.GetBytes(header[bearer.Length..].Trim());
        return System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(given, Encoding.UTF8.GetBytes(key));
    }

    private static Task Error(HttpContext ctx, int status, string message, string code, string? type = null, string? param = null)
    {
        if (ctx.Response.HasStarted) return Task.CompletedTask;
        ctx.Response.StatusCode = status;
        type ??= status switch { 401 => "authentication_error", 404 => "not_found_error", 429 => "rate_limit_error", >= 500 => "server_error", _ => "invalid_request_error" };
        return ctx.Response.WriteAsJsonAsync(new { error = new { message, type, param, code } }, _json);
    }

    private sealed class BodyTooLargeException(string message) : Exception(message);

    /// <summary>The request body, at most MaxBodyBytes (413 beyond), parsed as a JSON object.</summary>
    private async Task<RequestReader> ReadBody(HttpContext ctx)
    {
        long max = _options.MaxBodyBytes;
        string tooLarge = $"the request body is larger than the server's limit of {max} bytes";
        if (ctx.Request.ContentLength > max) throw new BodyTooLargeException(tooLarge);
        using var buffer = new MemoryStream();
        var chunk = new byte[16384];
        while (true)
        {
            int n = await ctx.Request.Body.ReadAsync(chunk, ctx.RequestAborted).ConfigureAwait(false);
            if (n == 0) break;
            if (buffer.Length + n > max) throw new BodyTooLargeException(tooLarge);
            buffer.Write(chunk, 0, n);
        }
        return RequestReader.Parse(buffer.ToArray());
    }

    private TextTokenizer RequireTokenizer(string what)
        => _tokenizer ?? throw new BadRequestException($"{what} needs a tokenizer and this model has none", code: "no_tokenizer");

    private async Task Tokenize(HttpContext ctx)
    {
        var body = await ReadBody(ctx).ConfigureAwait(false);
        string content = body.String("content") ?? throw new BadRequestException("'content' is required", "content");
        bool special = body.Bool("add_special") ?? false;
        var ids = RequireTokenizer("tokenizing").Encode(content, special && _tokenizer!.BosId is not null);
        await ctx.Response.WriteAsJsonAsync(new { tokens = ids }, _json).ConfigureAwait(false);
    }

    private async Task Detokenize(HttpContext ctx)
    {
        var body = await ReadBody(ctx).ConfigureAwait(false);
        var ids = body.Field("tokens") is { } t ? RequestReader.Ids(t, "tokens") : throw new BadRequestException("'tokens' is required", "tokens");
        var tokenizer = RequireTokenizer("detokenizing");
        foreach (int id in ids)
            if (id >= tokenizer.VocabSize) throw new BadRequestException($"token id {id} is outside the vocabulary (size {tokenizer.VocabSize})", "tokens");
        await ctx.Response.WriteAsJsonAsync(new { content = tokenizer.Decode(ids) }, _json).ConfigureAwait(false);
    }

    /// <summary>The settings completions and chat share: sampling, stop strings, n, streaming.</summary>
    private static (SamplingParams Sampling, IReadOnlyList<string> Stop, bool Stream, bool Usage) Common(RequestReader body)
    {
        if (body.Int("n", 1) is > 1) throw new BadRequestException("only n = 1 is supported", "n", "unsupported_value");
        var sampling = new SamplingParams
        {
            Temperature = body.Float("temperature") ?? 1f,
            TopP = body.Float("top_p") ?? 1f,
            TopK = body.Int("top_k", 0) ?? 0,
            MinP = body.Float("min_p") ?? 0f,
            RepetitionPenalty = body.Float("repetition_penalty") ?? 1f,
            PresencePenalty = body.Float("presence_penalty") ?? 0f,
            FrequencyPenalty = body.Float("frequency_penalty") ?? 0f,
            Seed = body.Seed("seed"),
        };
        try { sampling.Validate(); }
        catch (LckvException e) { throw new BadRequestException(e.Message, code: "invalid_value"); }
        var stop = body.Strings("stop").Where(s => s.Length > 0).ToArray();
        bool stream = body.Bool("stream") ?? false;
        bool usage = false;
        if (body.Field("stream_options") is { } so)
        {
            if (so.ValueKind != JsonValueKind.Object) throw RequestReader.Wrong("stream_options", "an object");
            usage = new RequestReader(so).Bool("include_usage") ?? false;
        }
        return (sampling, stop, stream, usage);
    }

    /// <summary>A conversation rendered by the chat template; a template that refuses it (raise_exception, a role it
    /// does not know) is a bad request.</summary>
    private string Render(IReadOnlyList<ChatMessage> messages)
    {
        var render = _options.ChatPromptRenderer
            ?? throw new BadRequestException("this model has no chat template; use /v1/completions with a prompt", "messages", "no_chat_template");
        try { return render(messages); }
        catch (LckvException e) { throw new BadRequestException($"the chat template refused the conversation: {e.Message}", "messages", "invalid_value"); }
    }

    private int[] ChatPrompt(string text) => EncodeChat(RequireTokenizer("a chat prompt"), text, _options.AddBos);

    /// <summary>A rendered conversation's ids: templates usually write the BOS token themselves, so BOS (when the
    /// tokenizer adds one by default and addBos) is put in front only when the text does not already begin with it.</summary>
    public static int[] EncodeChat(TextTokenizer tokenizer, string text, bool addBos)
    {
        var ids = tokenizer.Encode(text, addBos: false);
        if (!addBos || !tokenizer.AddBosByDefault || tokenizer.BosId is not int bos || (ids.Length > 0 && ids[0] == bos)) return ids;
        return [bos, .. ids];
    }

    /// <summary>POST /apply-template (llama.cpp's): the prompt text a chat request's messages render to.</summary>
    private async Task ApplyTemplate(HttpContext ctx)
    {
        var body = await ReadBody(ctx).ConfigureAwait(false);
        await ctx.Response.WriteAsJsonAsync(new { prompt = Render(ChatMessages(body)) }).ConfigureAwait(false);
    }

    private int[] TextPrompt(string text) => RequireTokenizer("a text prompt").Encode(text, _options.AddBos && _tokenizer!.AddBosByDefault && _tokenizer.BosId is not null);

    private async Task Completions(HttpContext ctx)
    {
        var body = await ReadBody(ctx).ConfigureAwait(false);
        int[] prompt = body.Field("prompt") switch
        {
            null => throw new BadRequestException("'prompt' is required", "prompt"),
            { ValueKind: JsonValueKind.String } s => TextPrompt(RequestReader.Text(s, "prompt")),
            { ValueKind: JsonValueKind.Array } a when a.GetArrayLength() == 1 && a[0].ValueKind is JsonValueKind.String or JsonValueKind.Array
                => a[0].ValueKind == JsonValueKind.String ? TextPrompt(RequestReader.Text(a[0], "prompt")) : RequestReader.Ids(a[0], "prompt"),
            { ValueKind: JsonValueKind.Array } a when a.GetArrayLength() > 0 && a[0].ValueKind is JsonValueKind.String or JsonValueKind.Array
                => throw new BadRequestException("one prompt per request is supported", "prompt", "unsupported_value"),
            { ValueKind: JsonValueKind.Array } a => RequestReader.Ids(a, "prompt"),
            _ => throw RequestReader.Wrong("prompt", "a string or a list of token ids"),
        };
        var (sampling, stop, stream, usage) = Common(body);
        int maxTokens = body.Int("max_tokens", 0) ?? _options.DefaultCompletionTokens;
        int? logprobs = body.Int("logprobs", 0, 20);
        var spec = new JobSpec { Prompt = prompt, MaxNewTokens = maxTokens, Sampling = sampling, StopStrings = stop, TopLogprobs = logprobs };
        await Run(ctx, spec, stream, usage, chat: false).ConfigureAwait(false);
    }

    private async Task ChatCompletions(HttpContext ctx)
    {
        var body = await ReadBody(ctx).ConfigureAwait(false);
        var messages = ChatMessages(body);
        var (sampling, stop, stream, usage) = Common(body);
        int? maxTokens = body.Int("max_completion_tokens", 0) ?? body.Int("max_tokens", 0);
        bool logprobs = body.Bool("logprobs") ?? false;
        int? top = body.Int("top_logprobs", 0, 20);
        if (top is not null && !logprobs) throw new BadRequestException("'top_logprobs' needs 'logprobs': true", "top_logprobs");
        int[] prompt = ChatPrompt(Render(messages));
        // without max_completion_tokens a chat reply runs until a stop rule or the end of the context
        var spec = new JobSpec
        {
            Prompt = prompt, MaxNewTokens = maxTokens ?? Scheduler.Engine.Model.ContextLength, Sampling = sampling,
            StopStrings = stop, TopLogprobs = logprobs ? top ?? 0 : null,
        };
        await Run(ctx, spec, stream, usage, chat: true).ConfigureAwait(false);
    }

    /// <summary>messages: role and content (a string, or a list of text parts).</summary>
    internal static List<ChatMessage> ChatMessages(RequestReader body)
    {
        if (body.Field("messages") is not { } m) throw new BadRequestException("'messages' is required", "messages");
        if (m.ValueKind != JsonValueKind.Array || m.GetArrayLength() == 0) throw RequestReader.Wrong("messages", "a non-empty list of messages");
        var list = new List<ChatMessage>();
        foreach (var e in m.EnumerateArray())
        {
            if (e.ValueKind != JsonValueKind.Object) throw RequestReader.Wrong("messages", "a list of objects");
            var r = new RequestReader(e);
            string role = r.String("role") ?? throw new BadRequestException("every message needs a 'role'", "messages");
            string content = r.Field("content") switch
            {
                null => "",
                { ValueKind: JsonValueKind.String } s => RequestReader.Text(s, "content"),
                { ValueKind: JsonValueKind.Array } parts => string.Concat(parts.EnumerateArray().Select(TextPart)),
                _ => throw RequestReader.Wrong("content", "a string or a list of text parts"),
            };
            list.Add(new ChatMessage(role, content));
        }
        return list;

        static string TextPart(JsonElement p)
        {
            if (p.ValueKind != JsonValueKind.Object) throw RequestReader.Wrong("content", "a list of text parts");
            var part = new RequestReader(p);
            if (part.String("type") != "text") throw new BadRequestException("only text content parts are supported", "content", "unsupported_value");
            return part.String("text") ?? "";
        }
    }

    /// <summary>Submits a job, then streams its events as server-sent events or answers with the whole result.</summary>
    private async Task Run(HttpContext ctx, JobSpec spec, bool stream, bool includeUsage, bool chat)
    {
        var abort = ctx.RequestAborted;
        var job = Scheduler.Submit(spec, abort, inlineReaders: true);
        try
        {
            string id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
            long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
            var text = new HeldText(spec.StopStrings);
            var tokens = new List<TokenLogprob>();
            var events = job.Events;
            if (!stream)
            {
                await foreach (var e in events.ReadAllAsync(abort).ConfigureAwait(false))
                {
                    switch (e)
                    {
                        case TokenEvent t:
                            text.Push(t.Text);
                            if (t.Logprob is { } lp) tokens.Add(lp);
                            break;
                        case FinishEvent f:
                        {
                            text.Finish(f.Text);
                            object? lps = spec.TopLogprobs is null ? null : Logprobs(chat, tokens, 0);
                            object choice = chat
                                ? new { index = 0, message = new { role = "assistant", content = text.All }, logprobs = lps, finish_reason = Reason(f) }
                                : new { index = 0, text = text.All, logprobs = lps, finish_reason = Reason(f) };
                            await ctx.Response.WriteAsJsonAsync(new
                            {
                                id, @object = chat ? "chat.completion" : "text_completion", created, model = _options.ModelName,
                                choices = new[] { choice }, usage = Usage(f),
                            }, _json, abort).ConfigureAwait(false);
                            return;
                        }
                        case FailEvent fail:
                            await Error(ctx, fail.Message.StartsWith("the server", StringComparison.Ordinal) ? 503 : 500, fail.Message, "generation_failed").ConfigureAwait(false);
                            return;
                    }
                }
                return;
            }

            ctx.Response.ContentType = "text/event-stream";
            ctx.Response.Headers.CacheControl = "no-cache";
            // events go straight into the response's pipe, every event ready at once before one flush: a client that
            // falls behind by some steps gets them in one write, and the engine never waits for a client
            var sse = new SseWriter(ctx.Response.BodyWriter, id, created, chat, _options.ModelName, includeUsage);
            if (chat) sse.Chunk(role: "assistant", content: "", finish: null);
            if (!await Flush(ctx, abort).ConfigureAwait(false)) return;
            while (await events.WaitToReadAsync(abort).ConfigureAwait(false))
            {
                while (events.TryRead(out var e))
                {
                    switch (e)
                    {
                        case TokenEvent t:
                        {
                            string delta = text.Push(t.Text);
                            if (t.Logprob is { } lp)
                                sse.Object(Chunk(id, created, chat, delta, Logprobs(chat, [lp], text.SentBefore(delta)), null, includeUsage));
                            else if (delta.Length > 0) sse.Chunk(role: null, delta, finish: null);
                            break;
                        }
                        case FinishEvent f:
                        {
                            string rest = text.Finish(f.Text);
                            if (rest.Length > 0) sse.Chunk(role: null, rest, finish: null);
                            sse.Chunk(role: null, content: null, Reason(f));
                            if (includeUsage) sse.Usage(f.PromptTokens, f.CompletionTokens);
                            sse.Done();
                            await ctx.Response.BodyWriter.FlushAsync(abort).ConfigureAwait(false);
                            return;
                        }
                        case FailEvent fail:
                            sse.Object(new { error = new { message = fail.Message, type = "server_error", param = (string?)null, code = "generation_failed" } });
                            await ctx.Response.BodyWriter.FlushAsync(abort).ConfigureAwait(false);
                            return;
                    }
                }
                if (!await Flush(ctx, abort).ConfigureAwait(false)) return;
            }
        }
        finally
        {
            // a client gone, or a failed write: the sequence is retired before the next step
            if (!job.IsDone) Scheduler.Cancel(job);
        }
    }

    private object Chunk(string id, long created, bool chat, object delta, object? logprobs, string? finish, bool includeUsage)
    {
        if (chat && delta is string content) delta = new { content };
        object choice = chat
            ? new { index = 0, delta, logprobs, finish_reason = finish }
            : new { index = 0, text = (string)delta, logprobs, finish_reason = finish };
        return includeUsage
            ? new { id, @object = chat ? "chat.completion.chunk" : "text_completion", created, model = _options.ModelName, choices = new[] { choice }, usage = (object?)null }
            : new { id, @object = chat ? "chat.completion.chunk" : "text_completion", created, model = _options.ModelName, choices = new[] { choice } };
    }

    // false once the client is gone (the response's reader completed): the caller's finally cancels the job
    private static async ValueTask<bool> Flush(HttpContext ctx, CancellationToken abort)
    {
        var r = await ctx.Response.BodyWriter.FlushAsync(abort).ConfigureAwait(false);
        return !r.IsCompleted && !r.IsCanceled;
    }

    private static string Reason(FinishEvent f) => f.Reason is FinishReason.Eos or FinishReason.StopString ? "stop" : "length";

    private static object Usage(FinishEvent f)
        => new { prompt_tokens = f.PromptTokens, completion_tokens = f.CompletionTokens, total_tokens = f.PromptTokens + f.CompletionTokens };

    /// <summary>Chat's {content: [{token, logprob, bytes, top_logprobs}]} or completions' parallel lists.</summary>
    private static object Logprobs(bool chat, IReadOnlyList<TokenLogprob> tokens, int textOffset)
    {
        if (chat)
            return new
            {
                content = tokens.Select(t => new
                {
                    token = t.Text, logprob = t.Logprob, bytes = Encoding.UTF8.GetBytes(t.Text).Select(b => (int)b),
                    top_logprobs = t.Top.Select(a => new { token = a.Text, logprob = a.Logprob, bytes = Encoding.UTF8.GetBytes(a.Text).Select(b => (int)b) }),
                }),
            };
        var offsets = new List<int>();
        int at = textOffset;
        foreach (var t in tokens) { offsets.Add(at); at += t.Text.Length; }
        return new
        {
            tokens = tokens.Select(t => t.Text),
            token_logprobs = tokens.Select(t => t.Logprob),
            top_logprobs = tokens.Select(t =>
            {
                var d = new Dictionary<string, float>();
                foreach (var a in t.Top) d.TryAdd(a.Text, a.Logprob);
                return d;
            }),
            text_offset = offsets,
        };
    }
}

/// <summary>
/// Streamed text with stop strings: text that could be the start of a stop string is held back until the next
/// token settles it, so that a client never receives part of a stop string.
/// </summary>
internal sealed class HeldText(IReadOnlyList<string> stops)
{
    private readonly StringBuilder _all = new();
    private int _sent;

    /// <summary>Everything sent so far.</summary>
    public string All => _all.ToString(0, _sent);

    /// <summary>Adds a piece; returns what can be sent now.</summary>
    public string Push(string piece)
    {
        _all.Append(piece);
        int safe = _all.Length - HeldBack();
        if (safe <= _sent) return "";
        string delta = _all.ToString(_sent, safe - _sent);
        _sent = safe;
        return delta;
    }

    /// <summary>Where a delta just returned by Push starts in the whole text.</summary>
    public int SentBefore(string delta) => _sent - delta.Length;

    /// <summary>The end: the final text (cut before a stop string; null without a tokenizer); returns what is left to send.</summary>
    public string Finish(string? final)
    {
        final ??= _all.ToString();
        if (final.Length < _sent) { _all.Length = _sent; return ""; } // held-back text never reaches a stop string's cut
        string rest = final[_sent..];
        _all.Clear().Append(final);
        _sent = final.Length;
        return rest;
    }

    // the longest end of the text that is a proper start of some stop string
    private int HeldBack()
    {
        int held = 0;
        foreach (var stop in stops)
            for (int k = Math.Min(stop.Length - 1, _all.Length - _sent); k > held; k--)
                if (EndsWith(stop, k)) { held = k; break; }
        return held;
    }

    private bool EndsWith(string stop, int k)
    {
        for (int i = 0; i < k; i++)
            if (_all[_all.Length - k + i] != stop[i]) return false;
        return true;
    }
}
