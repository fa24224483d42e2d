using System.ClientModel;
using System.Text;
using System.Text.Json;
using Lckv.Cache;
using Lckv.Generation;
using Lckv.Model;
using Lckv.Numerics;
using OpenAI;
using OpenAI.Chat;

namespace Lckv.Tests.Server;

/// <summary>
/// Generation through the server: greedy output equals the Generator's, streaming equals the whole answer, stop
/// strings, seeds and log-probabilities; concurrent streams under a KV budget that holds only some of them get what
/// they get alone and leave the pool empty; a cancelled stream frees its blocks. The chat endpoint is driven with the
/// official OpenAI client through a test renderer in the chat seam.
/// </summary>
public sealed class ServerGenerationTests
{
    private const string Prompt = "Once upon a time";

    /// <summary>What the Generator gives alone for the prompt (the same model, EOS ids and seed rule).</summary>
    internal static string Alone(int[] prompt, int maxTokens, SamplingParams sampling, IReadOnlyList<string>? stop = null)
    {
        using var model = LlamaModel.Load(TestServer.ModelDir);
        var tokenizer = TestServer.LoadTokenizer();
        var layout = model.KvLayout(TestServer.BlockSize, DType.F32);
        using var pool = new KvBlockPool(layout, 64L * model.KvBlocksFor(model.ContextLength, TestServer.BlockSize, 512) * layout.BlockBytes);
        var generator = new Generator(model, model.CreateCache(pool, 512));
        var result = generator.Generate([prompt], new GenerateOptions
        {
            MaxTokens = maxTokens, Sampling = sampling, StopIds = tokenizer.EosIds, StopStrings = stop ?? [],
        }, tokenizer);
        return result.Sequences[0].Text!;
    }

    internal static int[] Encode(string text) => TestServer.LoadTokenizer().Encode(text, addBos: true);

    private static string Text(JsonElement completion) => completion.GetProperty("choices")[0].GetProperty("text").GetString()!;

    private static string Streamed(List<string> events, out JsonElement? usage, out string? finish)
    {
        Assert.Equal("[DONE]", events[^1]);
        var text = new StringBuilder();
        usage = null;
        finish = null;
        foreach (var e in events[..^1])
        {
            var chunk = JsonDocument.Parse(e).RootElement;
            Assert.Equal("text_completion", chunk.GetProperty("object").GetString());
            if (chunk.TryGetProperty("usage", out var u) && u.ValueKind == JsonValueKind.Object) usage = u.Clone();
            foreach (var c in chunk.GetProperty("choices").EnumerateArray())
            {
                text.Append(c.GetProperty("text").GetString());
                if (c.GetProperty("finish_reason").ValueKind == JsonValueKind.String) finish = c.GetProperty("finish_reason").GetString();
            }
        }
        return text.ToString();
    }

    [SharedFact]
    public async Task GreedyOutputEqualsTheGeneratorsAndStreamingEqualsTheWholeAnswer()
    {
        string expected = Alone(Encode(Prompt), 24, SamplingParams.Greedy);
        await using var s = await TestServer.StartAsync();
        var (status, body) = await s.PostAsync("/v1/completions", """{"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0}""");
        Assert.Equal(200, status);
        Assert.Equal(expected, Text(body));
        var usage = body.GetProperty("usage");
        Assert.Equal(Encode(Prompt).Length, usage.GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(usage.GetProperty("prompt_tokens").GetInt32() + usage.GetProperty("completion_tokens").GetInt32(), usage.GetProperty("total_tokens").GetInt32());
        string finish = body.GetProperty("choices")[0].GetProperty("finish_reason").GetString()!;
        Assert.Equal(usage.GetProperty("completion_tokens").GetInt32() == 24 ? "length" : "stop", finish);

        // the same prompt as token ids
        (_, body) = await s.PostAsync("/v1/completions", JsonSerializer.Serialize(new { prompt = Encode(Prompt), max_tokens = 24, temperature = 0 }));
        Assert.Equal(expected, Text(body));

        var events = await s.StreamAsync("/v1/completions", """{"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}""");
        Assert.Equal(expected, Streamed(events, out var streamedUsage, out var streamedFinish));
        Assert.Equal(finish, streamedFinish);
        Assert.NotNull(streamedUsage);
        Assert.Equal(usage.GetProperty("completion_tokens").GetInt32(), streamedUsage!.Value.GetProperty("completion_tokens").GetInt32());
        // without include_usage no chunk carries usage
        events = await s.StreamAsync("/v1/completions", """{"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0, "stream": true}""");
        Streamed(events, out streamedUsage, out _);
        Assert.Null(streamedUsage);
        await s.Drained();
    }

    [SharedFact]
    public async Task StopStringsSeedsAndLogprobs()
    {
        await using var s = await TestServer.StartAsync();
        string full = Text((await s.PostAsync("/v1/completions", """{"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0}""")).Body);
        Assert.True(full.Length >= 12, full);
        string stop = full.Substring(full.Length / 2, 3);
        string cut = full[..full.IndexOf(stop, StringComparison.Ordinal)];
        string request = JsonSerializer.Serialize(new { prompt = Prompt, max_tokens = 24, temperature = 0, stop = new[] { "never-there", stop } });
        var (_, body) = await s.PostAsync("/v1/completions", request);
        Assert.Equal(cut, Text(body));
        Assert.Equal("stop", body.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        var events = await s.StreamAsync("/v1/completions", request.Replace("\"stop\"", "\"stream\":true,\"stop\"", StringComparison.Ordinal));
        Assert.Equal(cut, Streamed(events, out _, out var finish));
        Assert.Equal("stop", finish);
        // a single stop string works too
        (_, body) = await s.PostAsync("/v1/completions", JsonSerializer.Serialize(new { prompt = Prompt, max_tokens = 24, temperature = 0, stop }));
        Assert.Equal(cut, Text(body));

        // the same seed and prompt give the same text, the Generator's
        var sampled = new SamplingParams { Temperature = 1.2f, TopP = 0.95f, Seed = 1234 };
        string seeded = Alone(Encode(Prompt), 20, sampled);
        string seededRequest = """{"prompt": "Once upon a time", "max_tokens": 20, "temperature": 1.2, "top_p": 0.95, "seed": 1234}""";
        Assert.Equal(seeded, Text((await s.PostAsync("/v1/completions", seededRequest)).Body));
        Assert.Equal(seeded, Text((await s.PostAsync("/v1/completions", seededRequest)).Body));
        // the penalties reach the sampler (a strong presence penalty changes a greedy answer that repeats tokens)
        var penalized = new SamplingParams { Temperature = 0, PresencePenalty = 2, FrequencyPenalty = 1 };
        Assert.Equal(Alone(Encode(Prompt), 24, penalized),
            Text((await s.PostAsync("/v1/completions", """{"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "presence_penalty": 2, "frequency_penalty": 1}""")).Body));

        // logprobs: one entry per token, the greedy token is the most likely, the alternatives sorted
        (_, body) = await s.PostAsync("/v1/completions", """{"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "logprobs": 3}""");
        var lp = body.GetProperty("choices")[0].GetProperty("logprobs");
        int count = body.GetProperty("usage").GetProperty("completion_tokens").GetInt32();
        Assert.Equal(count, lp.GetProperty("tokens").GetArrayLength());
        Assert.Equal(count, lp.GetProperty("text_offset").GetArrayLength());
        // the tokens spell the text, the first without the space the encoder put in front
        Assert.Equal(Text(body), string.Concat(lp.GetProperty("tokens").EnumerateArray().Select(t => t.GetString())));
        for (int i = 0; i < count; i++)
        {
            float chosen = lp.GetProperty("token_logprobs")[i].GetSingle();
            var top = lp.GetProperty("top_logprobs")[i].EnumerateObject().Select(p => p.Value.GetSingle()).ToArray();
            Assert.InRange(top.Length, 1, 3);
            Assert.True(chosen <= 0);
            Assert.Equal(top.Max(), chosen, 1e-5f);
        }
        await s.Drained();
    }

    [SharedFact]
    public async Task ConcurrentStreamsUnderABudgetForSomeGetWhatTheyGetAlone()
    {
        const int clients = 6, maxTokens = 40;
        var prompts = Enumerable.Range(0, clients).Select(i => $"The {i} little pigs went to town and").ToArray();
        // greedy and seeded sampling alike: each sequence has its own sampler
        var settings = Enumerable.Range(0, clients).Select(i => i % 2 == 0 ? SamplingParams.Greedy : new SamplingParams { Temperature = 0.9f, Seed = (ulong)(100 + i) }).ToArray();
        var alone = Enumerable.Range(0, clients).Select(i => Alone(Encode(prompts[i]), maxTokens, settings[i])).ToArray();
        Assert.True(prompts.All(p => Encode(p).Length + maxTokens <= 64));
        // a budget of two sequences of 64 positions (the engine takes up to 8)
        await using var s = await TestServer.StartAsync(sequences: 2 * 64.0 / 256, maxBatch: 8, stepTokens: 16);
        Assert.Equal(2 * s.BlocksFor(64), s.Pool.TotalBlocks);
        int mostRunning = 0;
        s.Scheduler.AfterStep = () => mostRunning = Math.Max(mostRunning, s.Scheduler.Running);
        // all six arrive before the first step: two are admitted, four wait in the queue
        s.Scheduler.Paused = true;
        using var timeout = new CancellationTokenSource(TestServer.Timeout);
        var streams = Enumerable.Range(0, clients).Select(i => s.StreamAsync("/v1/completions", JsonSerializer.Serialize(new
        {
            prompt = prompts[i], max_tokens = maxTokens, temperature = settings[i].Temperature, seed = settings[i].Seed, stream = true,
        }), timeout.Token)).ToArray();
        await TestServer.Eventually(() => s.Scheduler.Running == 2 && s.Scheduler.Waiting == clients - 2, "two run and four wait");
        s.Scheduler.Paused = false;
        var results = await Task.WhenAll(streams);
        for (int i = 0; i < clients; i++) Assert.Equal(alone[i], Streamed(results[i], out _, out _));
        Assert.Equal(2, mostRunning);
        await s.Drained();
        Assert.Equal(0, s.Engine.PromisedBlocks);
    }

    [SharedFact]
    public async Task ALongPromptIsChunkedBesideADecodingStreamThatGetsATokenEveryStep()
    {
        await using var s = await TestServer.StartAsync(eos: false, stepTokens: 16);
        // per step: how many sequences were prefilling, and the decoding sequence's output length
        var steps = new List<(int Prefilling, int Decoded)>();
        Lckv.Generation.EngineSequence? decoding = null;
        s.Scheduler.AfterStep = () =>
        {
            decoding ??= s.Engine.Sequences.Count > 0 ? s.Engine.Sequences[0] : null;
            lock (steps) steps.Add((s.Engine.Sequences.Count(q => q.Prefilling), decoding?.Output.Count ?? 0));
            if (steps.Count == 5) s.Scheduler.Paused = true; // the long prompt arrives while the first decodes
        };
        using var timeout = new CancellationTokenSource(TestServer.Timeout);
        var first = s.PostAsync("/v1/completions", """{"prompt": [1, 10, 11], "max_tokens": 120, "temperature": 0}""", timeout.Token);
        await TestServer.Eventually(() => s.Scheduler.Paused, "the first sequence decodes");
        var longPrompt = Enumerable.Range(0, 100).Select(i => 20 + i).ToArray();
        var second = s.PostAsync("/v1/completions", JsonSerializer.Serialize(new { prompt = longPrompt, max_tokens = 4 }), timeout.Token);
        await TestServer.Eventually(() => s.Scheduler.Running == 2, "the long prompt is admitted");
        s.Scheduler.Paused = false;
        Assert.Equal(200, (await second).Status);
        Assert.Equal(200, (await first).Status);
        s.Scheduler.AfterStep = null;
        List<(int Prefilling, int Decoded)> seen;
        lock (steps) seen = [.. steps]; // the loop may still be in its last hook
        // 100 prompt tokens in chunks of the rows the decode leaves (15): seven steps, each with a token for the first
        var prefill = Enumerable.Range(1, seen.Count - 1).Where(i => seen[i].Prefilling > 0).ToList();
        Assert.Equal(6, prefill.Count); // the seventh chunk completes the prompt: no longer prefilling after it
        foreach (int i in prefill.Append(prefill[^1] + 1)) Assert.Equal(seen[i - 1].Decoded + 1, seen[i].Decoded);
        await s.Drained();
    }

    [SharedFact]
    public async Task ACancelledStreamFreesItsBlocks()
    {
        await using var s = await TestServer.StartAsync(eos: false);
        using var cancel = new CancellationTokenSource(TestServer.Timeout);
        var (request, response, steps) = await s.HoldAStreamAsync(cancel.Token);
        Assert.Equal(1, s.Scheduler.Running);
        Assert.True(s.Pool.UsedBlocks > 0);
        // the loop retires the sequence without taking another step
        cancel.Cancel();
        response.Dispose();
        request.Dispose();
        await TestServer.Eventually(() => s.Pool.UsedBlocks == 0 && s.Scheduler.Running == 0, "the cancelled sequence is retired", TimeSpan.FromSeconds(10));
        Assert.Equal(0, s.Engine.PromisedBlocks);
        Assert.Equal(10, steps());
        // the server goes on serving
        s.Scheduler.Paused = false;
        var (status, _) = await s.PostAsync("/v1/completions", """{"prompt": "x", "max_tokens": 2}""");
        Assert.Equal(200, status);
    }

    internal static string Render(IReadOnlyList<Lckv.Chat.ChatMessage> messages)
        => string.Concat(messages.Select(m => $"{m.Role}: {m.Content}\n")) + "assistant:";

    private static ChatClient Client(TestServer s) => new("tiny", new ApiKeyCredential("sk-test"), new OpenAIClientOptions
    {
        Endpoint = new Uri(s.Server.Address, "/v1"), NetworkTimeout = TestServer.Timeout,
    });

    [SharedFact]
    public async Task TheOpenAiClientDrivesChatThroughTheSeam()
    {
        await using var s = await TestServer.StartAsync(apiKey: "sk-test", chat: Render);
        var client = Client(s);
        List<OpenAI.Chat.ChatMessage> messages = [new SystemChatMessage("Be brief."), new UserChatMessage("Tell a story.")];
        string rendered = Render([new("system", "Be brief."), new("user", "Tell a story.")]);
        string expected = Alone(Encode(rendered), 16, SamplingParams.Greedy);

        ChatCompletion reply = (await client.CompleteChatAsync(messages, new ChatCompletionOptions { MaxOutputTokenCount = 16, Temperature = 0 })).Value;
        Assert.Equal(expected, reply.Content[0].Text);
        Assert.Equal(ChatMessageRole.Assistant, reply.Role);
        Assert.Equal(Encode(rendered).Length, reply.Usage.InputTokenCount);
        Assert.Equal(reply.Usage.OutputTokenCount == 16 ? ChatFinishReason.Length : ChatFinishReason.Stop, reply.FinishReason);

        // streaming: the deltas add up to the whole reply, and the last update carries the usage
        var text = new StringBuilder();
        ChatTokenUsage? usage = null;
        ChatFinishReason? finish = null;
        await foreach (var update in client.CompleteChatStreamingAsync(messages, new ChatCompletionOptions { MaxOutputTokenCount = 16, Temperature = 0 }))
        {
            foreach (var part in update.ContentUpdate) text.Append(part.Text);
            usage ??= update.Usage;
            finish ??= update.FinishReason;
        }
        Assert.Equal(expected, text.ToString());
        Assert.Equal(reply.FinishReason, finish);
        Assert.NotNull(usage);
        Assert.Equal(reply.Usage.OutputTokenCount, usage!.OutputTokenCount);

        // stop sequences, seeds, log-probabilities
        string stop = expected.Substring(expected.Length / 2, 2);
        var stopOptions = new ChatCompletionOptions { MaxOutputTokenCount = 16, Temperature = 0 };
        stopOptions.StopSequences.Add(stop);
        reply = (await client.CompleteChatAsync(messages, stopOptions)).Value;
        Assert.Equal(expected[..expected.IndexOf(stop, StringComparison.Ordinal)], reply.Content[0].Text);
        Assert.Equal(ChatFinishReason.Stop, reply.FinishReason);
#pragma warning disable OPENAI001 // Seed is marked experimental in the client
        var seeded = new ChatCompletionOptions { MaxOutputTokenCount = 12, Temperature = 1.1f, Seed = 77 };
#pragma warning restore OPENAI001
        string a = (await client.CompleteChatAsync(messages, seeded)).Value.Content[0].Text;
        string b = (await client.CompleteChatAsync(messages, seeded)).Value.Content[0].Text;
        Assert.Equal(a, b);
        Assert.Equal(Alone(Encode(rendered), 12, new SamplingParams { Temperature = 1.1f, Seed = 77 }), a);
        reply = (await client.CompleteChatAsync(messages, new ChatCompletionOptions
        {
            MaxOutputTokenCount = 6, Temperature = 0, IncludeLogProbabilities = true, TopLogProbabilityCount = 2,
        })).Value;
        Assert.Equal(reply.Usage.OutputTokenCount, reply.ContentTokenLogProbabilities.Count);
        foreach (var t in reply.ContentTokenLogProbabilities)
        {
            Assert.Equal(2, t.TopLogProbabilities.Count);
            Assert.Equal(t.TopLogProbabilities[0].LogProbability, t.LogProbability, 1e-5f);
        }
        await s.Drained();
    }
}
