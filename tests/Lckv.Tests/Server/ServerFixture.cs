using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Lckv.Cache;
using Lckv.Formats;
using Lckv.Generation;
using Lckv.Model;
using Lckv.Numerics;
using Lckv.Server;

namespace Lckv.Tests.Server;

/// <summary>
/// An in-process server on a free loopback port over the golden llama-standard model (vocab 4096, context 256) and
/// the en4k tokenizer, with its own KV pool; every wait it offers has a timeout.
/// </summary>
internal sealed class TestServer : IAsyncDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);
    public const int BlockSize = 16;

    public required LlamaModel Model { get; init; }
    public required TextTokenizer Tokenizer { get; init; }
    public required KvBlockPool Pool { get; init; }
    public required LckvServer Server { get; init; }
    public required HttpClient Http { get; init; }
    public BatchScheduler Scheduler => Server.Scheduler;
    public GenerationEngine Engine => Server.Scheduler.Engine;

    public static string ModelDir => SharedData.Path("golden", "llama-standard");
    public static TextTokenizer LoadTokenizer() => TextTokenizer.Load(SharedData.Path("tokenizers", "en4k.model"));

    /// <param name="sequences">KV budget: this many full-context sequences</param>
    /// <param name="eos">false: sequences run to max_tokens (no stop ids)</param>
    public static async Task<TestServer> StartAsync(double sequences = 8, int maxBatch = 8, int maxQueue = 64, string? apiKey = null,
        Func<IReadOnlyList<Lckv.Chat.ChatMessage>, string>? chat = null, long maxBody = 1 << 20, int stepTokens = 64, bool eos = true)
    {
        var model = LlamaModel.Load(ModelDir);
        var tokenizer = LoadTokenizer();
        var options = new EngineOptions { MaxStepTokens = stepTokens, MaxSequences = maxBatch, MaxPromptTokens = model.ContextLength };
        var layout = model.KvLayout(BlockSize, DType.F32);
        long perSequence = model.KvBlocksFor(model.ContextLength, BlockSize, options.StepRows(model.Map));
        var pool = new KvBlockPool(layout, (long)(sequences * perSequence) * layout.BlockBytes);
        var engine = new GenerationEngine(model, model.CreateCache(pool, options.StepRows(model.Map)), options);
        var scheduler = new BatchScheduler(engine, tokenizer, eos ? tokenizer.EosIds : [], maxQueue);
        var server = await LckvServer.StartAsync(scheduler, tokenizer, new ServerOptions
        {
            Port = 0, ApiKey = apiKey, ModelName = "tiny", ChatPromptRenderer = chat, MaxBodyBytes = maxBody,
        });
        var http = new HttpClient { BaseAddress = server.Address, Timeout = Timeout };
        if (apiKey is not null) http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
        return new TestServer { Model = model, Tokenizer = tokenizer, Pool = pool, Server = server, Http = http };
    }

    /// <summary>KV blocks one sequence of `tokens` positions takes.</summary>
    public long BlocksFor(int tokens) => Engine.Cache.BlocksForTokens(tokens);

    public async Task<(int Status, JsonElement Body)> PostAsync(string path, string json, CancellationToken token = default)
    {
        using var response = await Http.PostAsync(path, new StringContent(json, Encoding.UTF8, "application/json"), token);
        string text = await response.Content.ReadAsStringAsync(token);
        return ((int)response.StatusCode, JsonDocument.Parse(text).RootElement.Clone());
    }

    /// <summary>A streamed request's data payloads, [DONE] included, in order.</summary>
    public async Task<List<string>> StreamAsync(string path, string json, CancellationToken token = default)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        using var response = await Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, token);
        Assert.Equal(200, (int)response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(token));
        var events = new List<string>();
        while (await reader.ReadLineAsync(token) is { } line)
        {
            if (line.Length == 0) continue;
            Assert.StartsWith("data: ", line);
            events.Add(line["data: ".Length..]);
        }
        return events;
    }

    /// <summary>
    /// A streaming completion held mid-generation: the engine pauses after its 10th step with the one sequence running.
    /// Disposing the result is the client going away. Returns the steps counter.
    /// </summary>
    public async Task<(HttpRequestMessage Request, HttpResponseMessage Response, Func<int> Steps)> HoldAStreamAsync(CancellationToken token)
    {
        int steps = 0;
        Scheduler.AfterStep = () => { if (++steps == 10) Scheduler.Paused = true; };
        var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = new StringContent("""{"prompt": "Once upon a time", "max_tokens": 240, "temperature": 0, "stream": true}"""),
        };
        var response = await Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, token);
        var reader = new StreamReader(await response.Content.ReadAsStreamAsync(token));
        for (int i = 0; i < 3; i++) await reader.ReadLineAsync(token);
        await Eventually(() => Scheduler.Paused, "ten steps are taken");
        return (request, response, () => steps);
    }

    /// <summary>Polls until the condition holds; fails after the timeout.</summary>
    public static async Task Eventually(Func<bool> condition, string what, TimeSpan? timeout = null)
    {
        var until = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(20));
        while (!condition())
        {
            if (DateTime.UtcNow > until) Assert.Fail($"timed out waiting until {what}");
            await Task.Delay(10);
        }
    }

    /// <summary>Every sequence retired: no blocks held or promised.</summary>
    public Task Drained() => Eventually(() => Scheduler.Running == 0 && Scheduler.Waiting == 0 && Pool.UsedBlocks == 0, "the pool is empty");

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await Server.DisposeAsync();
        Pool.Dispose();
        Model.Dispose();
    }
}
