using System.Globalization;
using System.Text.Json;

namespace Lckv.Tests.Server;

/// <summary>
/// /metrics: the token counters equal the usage the responses reported, the KV gauges return to an empty pool, each
/// server counts on its own, the API key guards the route, and a client that disconnects mid-stream has its blocks
/// freed without another step, as a scrape shows.
/// </summary>
public sealed class ServerMetricsTests
{
    /// <summary>A scrape as sample → value ("name" or "name{labels}" as exported).</summary>
    internal static async Task<Dictionary<string, double>> Scrape(TestServer s, HttpClient? http = null)
    {
        using var response = await (http ?? s.Http).GetAsync("/metrics");
        Assert.Equal(200, (int)response.StatusCode);
        Assert.Equal("text/plain", response.Content.Headers.ContentType?.MediaType);
        var samples = new Dictionary<string, double>();
        foreach (var line in (await response.Content.ReadAsStringAsync()).Split('\n'))
        {
            if (line.Length == 0 || line[0] == '#') continue;
            int space = line.LastIndexOf(' ');
            samples[line[..space]] = double.Parse(line[(space + 1)..], CultureInfo.InvariantCulture);
        }
        return samples;
    }

    [SharedFact]
    public async Task CountersEqualTheReportedUsageAndTheGaugesReturnToAnEmptyPool()
    {
        await using var s = await TestServer.StartAsync();
        var before = await Scrape(s);
        Assert.Equal(0, before["lckv_kv_blocks_used"]);
        Assert.Equal(s.Pool.TotalBlocks, before["lckv_kv_blocks_free"]);
        Assert.Equal(0, before["lckv_requests_running"]);
        Assert.Equal(0, before["lckv_requests_waiting"]);
        Assert.Equal(0, before["lckv_prompt_tokens_total"]);
        Assert.Equal(0, before["lckv_generation_tokens_total"]);

        int prompt = 0, generated = 0;
        var reasons = new Dictionary<string, int> { ["stop"] = 0, ["length"] = 0 };
        string[] bodies =
        [
            """{"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}""",
            """{"prompt": "The little dog", "max_tokens": 20, "temperature": 0.9, "seed": 3}""",
            """{"prompt": [1, 10, 11, 12], "max_tokens": 7, "temperature": 0}""",
        ];
        foreach (var body in bodies)
        {
            var (status, json) = await s.PostAsync("/v1/completions", body);
            Assert.Equal(200, status);
            var usage = json.GetProperty("usage");
            prompt += usage.GetProperty("prompt_tokens").GetInt32();
            generated += usage.GetProperty("completion_tokens").GetInt32();
            reasons[json.GetProperty("choices")[0].GetProperty("finish_reason").GetString()!]++;
        }
        var events = await s.StreamAsync("/v1/completions", """{"prompt": "Once upon a time", "max_tokens": 9, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}""");
        var streamed = JsonDocument.Parse(events[^2]).RootElement.GetProperty("usage");
        prompt += streamed.GetProperty("prompt_tokens").GetInt32();
        generated += streamed.GetProperty("completion_tokens").GetInt32();
        foreach (var e in events[..^1])
            foreach (var c in JsonDocument.Parse(e).RootElement.GetProperty("choices").EnumerateArray())
                if (c.GetProperty("finish_reason").ValueKind == JsonValueKind.String) reasons[c.GetProperty("finish_reason").GetString()!]++;
        await s.Drained();

        var after = await Scrape(s);
        Assert.Equal(prompt, after["lckv_prompt_tokens_total"]);
        Assert.Equal(generated, after["lckv_generation_tokens_total"]);
        Assert.Equal(reasons["stop"], after["lckv_requests_finished_total{reason=\"stop\"}"]);
        Assert.Equal(reasons["length"], after["lckv_requests_finished_total{reason=\"length\"}"]);
        Assert.Equal(0, after["lckv_requests_finished_total{reason=\"cancelled\"}"]);
        Assert.Equal(0, after["lckv_requests_finished_total{reason=\"error\"}"]);
        Assert.Equal(0, after["lckv_kv_blocks_used"]);
        Assert.Equal(s.Pool.TotalBlocks, after["lckv_kv_blocks_free"]);
        Assert.Equal(0, after["lckv_requests_running"]);
        Assert.Equal(0, after["lckv_requests_waiting"]);
        // every request got a first token; every later generated token (no stop strings here) is one gap
        Assert.Equal(4, after["lckv_time_to_first_token_seconds_count"]);
        Assert.Equal(generated - 4, after["lckv_inter_token_latency_seconds_count"]);
        Assert.Equal(after["lckv_inter_token_latency_seconds_count"], after["lckv_inter_token_latency_seconds_bucket{le=\"+Inf\"}"]);
        Assert.True(after["lckv_step_duration_seconds_count"] >= 4);
        Assert.True(after["lckv_time_to_first_token_seconds_sum"] > 0);

        // a second server in the process counts on its own; with an API key /metrics needs it, /health does not
        await using var guarded = await TestServer.StartAsync(apiKey: "sk-metrics");
        var fresh = await Scrape(guarded);
        Assert.Equal(0, fresh["lckv_prompt_tokens_total"]);
        Assert.Equal(0, fresh["lckv_requests_finished_total{reason=\"stop\"}"]);
        using var anonymous = new HttpClient { BaseAddress = guarded.Server.Address, Timeout = TestServer.Timeout };
        Assert.Equal(401, (int)(await anonymous.GetAsync("/metrics")).StatusCode);
        Assert.Equal(200, (int)(await anonymous.GetAsync("/health")).StatusCode);
    }

    [SharedFact]
    public async Task AClientThatDisconnectsMidStreamHasItsBlocksFreedWithoutAnotherStep()
    {
        await using var s = await TestServer.StartAsync(eos: false);
        using var cancel = new CancellationTokenSource(TestServer.Timeout);
        var (request, response, steps) = await s.HoldAStreamAsync(cancel.Token);
        var held = await Scrape(s);
        Assert.Equal(1, held["lckv_requests_running"]);
        Assert.True(held["lckv_kv_blocks_used"] > 0);
        Assert.Equal(s.Pool.TotalBlocks, held["lckv_kv_blocks_used"] + held["lckv_kv_blocks_free"]);

        // the client goes; the loop retires the sequence while it takes no step
        cancel.Cancel();
        response.Dispose();
        request.Dispose();
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        Dictionary<string, double> freed;
        while ((freed = await Scrape(s))["lckv_kv_blocks_used"] != 0 || freed["lckv_requests_running"] != 0)
        {
            if (DateTime.UtcNow > until) Assert.Fail("the disconnected client's blocks were not freed");
            await Task.Delay(10);
        }
        Assert.Equal(10, steps());
        Assert.Equal(s.Pool.TotalBlocks, freed["lckv_kv_blocks_free"]);
        Assert.Equal(1, freed["lckv_requests_finished_total{reason=\"cancelled\"}"]);
        // one step evaluated the prompt and sampled the first token, each of the other nine sampled one more
        Assert.Equal(10, freed["lckv_generation_tokens_total"]);
        Assert.Equal(s.Tokenizer.Encode("Once upon a time", addBos: true).Length, freed["lckv_prompt_tokens_total"]);
        s.Scheduler.Paused = false;
    }
}
