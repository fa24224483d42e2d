using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Lckv.Server;

namespace Lckv.Tests.Server;

/// <summary>
/// The HTTP surface with a raw client: health, models, tokenize/detokenize, and the OpenAI-style errors with their
/// status codes (malformed JSON, wrong types, oversized bodies, prompts past the context, n > 1, the API key, a
/// request that can never fit, a full queue, a model without a chat template).
/// </summary>
public sealed class ServerApiTests
{
    private static void AssertError(int status, JsonElement body, int expectedStatus, string code, string? contains = null)
    {
        Assert.Equal(expectedStatus, status);
        var error = body.GetProperty("error");
        Assert.Equal(code, error.GetProperty("code").GetString());
        Assert.False(string.IsNullOrEmpty(error.GetProperty("message").GetString()));
        Assert.False(string.IsNullOrEmpty(error.GetProperty("type").GetString()));
        if (contains is not null) Assert.Contains(contains, error.GetProperty("message").GetString());
    }

    [SharedFact]
    public async Task HealthModelsTokenizeAndDetokenize()
    {
        await using var s = await TestServer.StartAsync();
        var health = await s.Http.GetStringAsync("/health");
        Assert.Equal("ok", JsonDocument.Parse(health).RootElement.GetProperty("status").GetString());
        var models = JsonDocument.Parse(await s.Http.GetStringAsync("/v1/models")).RootElement;
        Assert.Equal("list", models.GetProperty("object").GetString());
        Assert.Equal("tiny", models.GetProperty("data")[0].GetProperty("id").GetString());

        var (status, body) = await s.PostAsync("/tokenize", """{"content": "Once upon a time"}""");
        Assert.Equal(200, status);
        int[] ids = body.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        Assert.Equal(s.Tokenizer.Encode("Once upon a time", addBos: false), ids);
        (status, body) = await s.PostAsync("/detokenize", JsonSerializer.Serialize(new { tokens = ids }));
        Assert.Equal(200, status);
        Assert.Equal("Once upon a time", body.GetProperty("content").GetString());
        (status, body) = await s.PostAsync("/detokenize", """{"tokens": [1, 99999]}""");
        AssertError(status, body, 400, "invalid_request");
        (status, body) = await s.PostAsync("/tokenize", """{"content": 5}""");
        AssertError(status, body, 400, "invalid_type");
    }

    [SharedFact]
    public async Task BadRequestsGetOpenAiErrorsWithTheirStatus()
    {
        await using var s = await TestServer.StartAsync(sequences: 1, maxBody: 4096);
        var (status, body) = await s.PostAsync("/v1/completions", """{"prompt": "x", """);
        AssertError(status, body, 400, "invalid_json");
        (status, body) = await s.PostAsync("/v1/completions", "[1, 2]");
        AssertError(status, body, 400, "invalid_json");
        (status, body) = await s.PostAsync("/v1/completions", """{"prompt": "x", "max_tokens": "ten"}""");
        AssertError(status, body, 400, "invalid_type", "max_tokens");
        Assert.Equal("max_tokens", body.GetProperty("error").GetProperty("param").GetString());
        (status, body) = await s.PostAsync("/v1/completions", """{"prompt": "x", "temperature": true}""");
        AssertError(status, body, 400, "invalid_type", "temperature");
        (status, body) = await s.PostAsync("/v1/completions", """{"prompt": {"a": 1}}""");
        AssertError(status, body, 400, "invalid_type", "prompt");
        (status, body) = await s.PostAsync("/v1/completions", """{"prompt": "x", "stop": [1]}""");
        AssertError(status, body, 400, "invalid_type", "stop");
        (status, body) = await s.PostAsync("/v1/completions", """{"prompt": "x", "top_p": 0}""");
        AssertError(status, body, 400, "invalid_value", "top_p");
        (status, body) = await s.PostAsync("/v1/completions", """{"max_tokens": 2}""");
        AssertError(status, body, 400, "invalid_request", "prompt");
        (status, body) = await s.PostAsync("/v1/completions", """{"prompt": "x", "n": 2}""");
        AssertError(status, body, 400, "unsupported_value", "n = 1");
        (status, body) = await s.PostAsync("/v1/completions", """{"prompt": [1, 5000]}""");
        AssertError(status, body, 400, "invalid_prompt", "vocabulary");

        // unknown fields are ignored; n = 1 is fine
        (status, body) = await s.PostAsync("/v1/completions", """{"prompt": "x", "max_tokens": 2, "n": 1, "whatever": {"deep": [1]}, "user": "u"}""");
        Assert.Equal(200, status);
        Assert.Equal("text_completion", body.GetProperty("object").GetString());

        // a prompt past the context (256)
        var longPrompt = JsonSerializer.Serialize(new { prompt = Enumerable.Repeat(100, 300).ToArray() });
        (status, body) = await s.PostAsync("/v1/completions", longPrompt);
        AssertError(status, body, 400, "context_length_exceeded", "256");

        // a body over the 4096-byte limit, with and without a length up front
        var big = JsonSerializer.Serialize(new { prompt = new string('a', 5000) });
        (status, body) = await s.PostAsync("/v1/completions", big);
        AssertError(status, body, 413, "request_too_large", "4096");
        using (var chunked = new HttpRequestMessage(HttpMethod.Post, "/v1/completions"))
        {
            chunked.Content = new StreamContent(new MemoryStream(Encoding.UTF8.GetBytes(big)));
            chunked.Headers.TransferEncodingChunked = true;
            using var response = await s.Http.SendAsync(chunked);
            Assert.Equal(413, (int)response.StatusCode);
        }

        // no template: chat says so; its messages are still checked first
        (status, body) = await s.PostAsync("/v1/chat/completions", """{"messages": [{"role": "user", "content": "hi"}]}""");
        AssertError(status, body, 400, "no_chat_template", "no chat template");
        (status, body) = await s.PostAsync("/v1/chat/completions", """{"messages": "hi"}""");
        AssertError(status, body, 400, "invalid_type", "messages");

        using var missing = await s.Http.GetAsync("/v1/nothing");
        Assert.Equal(404, (int)missing.StatusCode);
    }

    [SharedFact]
    public async Task ARequestThatCanNeverFitIsRefusedAtOnceWithTheNumbers()
    {
        // room for 40 positions: a prompt of 5 with 100 new tokens can never be admitted
        await using var s = await TestServer.StartAsync(sequences: 40.0 / 256);
        var (status, body) = await s.PostAsync("/v1/completions", """{"prompt": [1, 10, 11, 12, 13], "max_tokens": 100}""");
        AssertError(status, body, 400, "kv_budget_exceeded", "KV blocks");
        Assert.Contains($"needs {s.BlocksFor(105)} KV blocks", body.GetProperty("error").GetProperty("message").GetString());
        (status, _) = await s.PostAsync("/v1/completions", """{"prompt": [1, 10, 11, 12, 13], "max_tokens": 8}""");
        Assert.Equal(200, status);
        await s.Drained();
    }

    [SharedFact]
    public async Task TheApiKeyGuardsEveryV1Route()
    {
        await using var s = await TestServer.StartAsync(apiKey: "sk-test");
        using var open = new HttpClient { BaseAddress = s.Server.Address, Timeout = TestServer.Timeout };
        using (var r = await open.GetAsync("/v1/models"))
        {
            Assert.Equal(401, (int)r.StatusCode);
            var error = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
            Assert.Equal("invalid_api_key", error.GetProperty("code").GetString());
        }
        open.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "sk-wrong");
        using (var r = await open.PostAsync("/v1/completions", new StringContent("""{"prompt": "x"}""")))
            Assert.Equal(401, (int)r.StatusCode);
        using (var r = await open.GetAsync("/health")) Assert.Equal(200, (int)r.StatusCode);
        using (var r = await s.Http.GetAsync("/v1/models")) Assert.Equal(200, (int)r.StatusCode);
        var (status, _) = await s.PostAsync("/v1/completions", """{"prompt": "x", "max_tokens": 1}""");
        Assert.Equal(200, status);
    }

    [SharedFact]
    public async Task AFullQueueAnswers429AndAWaitingClientThatLeavesIsDropped()
    {
        // room for one sequence of the whole context, a queue of two
        await using var s = await TestServer.StartAsync(sequences: 1, maxQueue: 2, eos: false);
        using var cancel = new CancellationTokenSource(TestServer.Timeout);
        // the engine takes no step until the queue is checked: the holder stays admitted
        s.Scheduler.Paused = true;
        var holder = s.PostAsync("/v1/completions", """{"prompt": [1, 10, 11], "max_tokens": 250, "temperature": 0}""", cancel.Token);
        await TestServer.Eventually(() => s.Scheduler.Running == 1, "the first request is admitted");
        using var leaves = CancellationTokenSource.CreateLinkedTokenSource(cancel.Token);
        var leaving = s.PostAsync("/v1/completions", """{"prompt": [1, 10, 11], "max_tokens": 250}""", leaves.Token);
        await TestServer.Eventually(() => s.Scheduler.Waiting == 1, "the second request waits");
        var waiting = s.PostAsync("/v1/completions", """{"prompt": [1, 10, 12], "max_tokens": 250}""", cancel.Token);
        await TestServer.Eventually(() => s.Scheduler.Waiting == 2, "the third request waits");
        var (status, body) = await s.PostAsync("/v1/completions", """{"prompt": [1, 10, 11], "max_tokens": 4}""", cancel.Token);
        AssertError(status, body, 429, "queue_full");
        Assert.Equal("rate_limit_error", body.GetProperty("error").GetProperty("type").GetString());
        // a waiting client that leaves is dropped from the queue
        leaves.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => leaving);
        await TestServer.Eventually(() => s.Scheduler.Waiting == 1, "the client that left is dropped");
        // the holder runs to its end; the waiting request is admitted and completes
        s.Scheduler.Paused = false;
        Assert.Equal(200, (await holder).Status);
        var (waitedStatus, waited) = await waiting;
        Assert.Equal(200, waitedStatus);
        Assert.Equal(250, waited.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        await s.Drained();
    }

    [SharedFact]
    public async Task ChatStreamsChunksWithDeltas()
    {
        await using var s = await TestServer.StartAsync(chat: m => string.Concat(m.Select(x => $"{x.Role}: {x.Content}\n")));
        var events = await s.StreamAsync("/v1/chat/completions", """
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}], "max_completion_tokens": 5, "max_tokens": 99,
             "temperature": 0, "stream": true, "stream_options": {"include_usage": true}, "logprobs": true, "top_logprobs": 1}
            """);
        Assert.Equal("[DONE]", events[^1]);
        var chunks = events[..^1].Select(e => JsonDocument.Parse(e).RootElement).ToList();
        Assert.All(chunks, c => Assert.Equal("chat.completion.chunk", c.GetProperty("object").GetString()));
        Assert.Equal("assistant", chunks[0].GetProperty("choices")[0].GetProperty("delta").GetProperty("role").GetString());
        var last = chunks[^1];
        Assert.Equal(0, last.GetProperty("choices").GetArrayLength());
        Assert.Equal(5, last.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        var final = chunks[^2].GetProperty("choices")[0];
        Assert.Equal("length", final.GetProperty("finish_reason").GetString());
        int logprobs = chunks.Sum(c => c.GetProperty("choices").EnumerateArray()
            .Sum(x => x.GetProperty("logprobs") is { ValueKind: JsonValueKind.Object } l ? l.GetProperty("content").GetArrayLength() : 0));
        Assert.Equal(5, logprobs);
        var (status, body) = await s.PostAsync("/v1/chat/completions", """{"messages": [{"role": "user", "content": "Hi"}], "top_logprobs": 2}""");
        AssertError(status, body, 400, "invalid_request", "logprobs");
        (status, body) = await s.PostAsync("/v1/chat/completions", """{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}""");
        AssertError(status, body, 400, "unsupported_value", "text");
    }

    [Fact]
    public void ServeRefusesBadSettingsBeforeLoadingAModel()
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        Assert.Equal(1, Lckv.Cli.Cli.Run(["serve", "--preset", "small", "--queue", "0"], stdout, stderr));
        Assert.StartsWith("error: --queue", stderr.ToString());
        stderr.GetStringBuilder().Clear();
        Assert.Equal(1, Lckv.Cli.Cli.Run(["serve", "--preset", "small", "--port", "70000"], stdout, stderr));
        Assert.StartsWith("error: --port", stderr.ToString());
    }

    [Fact]
    public void HeldTextNeverSendsPartOfAStopString()
    {
        var t = new HeldText(["END"]);
        Assert.Equal("ab", t.Push("ab"));
        Assert.Equal("", t.Push("cE"[1..])); // "E" could start "END"
        Assert.Equal("Ex", t.Push("x"));     // it did not
        Assert.Equal("", t.Push("EN"));
        Assert.Equal("", t.Finish("abEx"));  // the engine cut the text before "END"
        Assert.Equal("abEx", t.All);
        var u = new HeldText([]);
        Assert.Equal("a", u.Push("a"));
        Assert.Equal("b", u.Finish("ab"));   // a flushed remainder
        Assert.Equal("ab", u.All);
    }
}
