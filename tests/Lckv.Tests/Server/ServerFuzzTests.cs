using System.Text;
using System.Text.Json;
using Xunit.Abstractions;

namespace Lckv.Tests.Server;

/// <summary>
/// 1,000 seeded mutations of valid request bodies (bytes flipped, inserted, deleted, truncated; fields set to wrong
/// types, huge or negative numbers, deep nesting) sent to the JSON endpoints: every answer is 200 with JSON, or an
/// OpenAI-style error object with a 4xx status; never a 5xx, a dropped connection or a hang, and the server still
/// serves a normal request afterwards with its pool empty. LCKV_FUZZ_SEED replays a run.
/// </summary>
public sealed class ServerFuzzTests(ITestOutputHelper output)
{
    private static readonly string[] _seeds =
    [
        """{"prompt":"Once upon a time","max_tokens":4,"temperature":0}""",
        """{"prompt":[1,52,300,7],"max_tokens":3,"temperature":0.8,"top_p":0.9,"top_k":40,"seed":5,"stop":["."],"logprobs":2}""",
        """{"prompt":"a","max_tokens":2,"stream":true,"stream_options":{"include_usage":true},"presence_penalty":0.5}""",
        """{"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":3,"logprobs":true,"top_logprobs":2}""",
        """{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hello"}]}],"max_tokens":2,"stream":true}""",
        """{"content":"Once upon a time"}""",
        """{"tokens":[1,52,300]}""",
    ];

    private static readonly string[] _paths = ["/v1/completions", "/v1/completions", "/v1/completions", "/v1/chat/completions", "/v1/chat/completions", "/tokenize", "/detokenize"];

    private static readonly string[] _values =
    [
        "null", "true", "-1", "0", "1e308", "-1e308", "99999999999999999999", "2147483648", "\"\"", "\"x\"", "[]", "{}",
        "[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]", "[-5,99999]", "\"\\ud800\"", "1.5", "NaN",
    ];

    [SharedFact]
    public async Task MutatedBodiesGetJsonAnswersAndTheServerKeepsServing()
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("LCKV_FUZZ_SEED"), out var s) ? s : Environment.TickCount & 0xFFFF;
        output.WriteLine($"seed {seed} (LCKV_FUZZ_SEED={seed} replays it)");
        var rng = new Random(seed);
        await using var server = await TestServer.StartAsync(chat: ServerGenerationTests.Render);
        var statuses = new SortedDictionary<int, int>();
        for (int i = 0; i < 1000; i++)
        {
            int k = rng.Next(_seeds.Length);
            byte[] body = Mutate(_seeds[k], rng);
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            using var request = new HttpRequestMessage(HttpMethod.Post, _paths[k]) { Content = new ByteArrayContent(body) };
            request.Content.Headers.ContentType = new("application/json");
            HttpResponseMessage response;
            try { response = await server.Http.SendAsync(request, cts.Token); }
            catch (Exception e) { throw new Xunit.Sdk.XunitException($"case {i} (seed {seed}) {_paths[k]} {Encoding.UTF8.GetString(body)}: {e.GetType().Name} {e.Message}"); }
            using (response)
            {
                int status = (int)response.StatusCode;
                statuses[status] = statuses.GetValueOrDefault(status) + 1;
                string text = await response.Content.ReadAsStringAsync(cts.Token);
                string what = $"case {i} (seed {seed}) {_paths[k]} {Encoding.UTF8.GetString(body)} -> {status} {text}";
                Assert.True(status is 200 or (>= 400 and < 500), what);
                if (status != 200)
                {
                    using var doc = JsonDocument.Parse(text);
                    var error = doc.RootElement.GetProperty("error");
                    Assert.False(string.IsNullOrEmpty(error.GetProperty("message").GetString()), what);
                    Assert.Equal(JsonValueKind.String, error.GetProperty("type").ValueKind);
                }
            }
        }
        output.WriteLine("statuses: " + string.Join(", ", statuses.Select(kv => $"{kv.Key} x{kv.Value}")));
        Assert.True(statuses.GetValueOrDefault(200) > 50, "too few mutations stayed valid to exercise generation");
        Assert.True(statuses.Keys.Any(k => k >= 400), "no mutation was refused");

        var (okStatus, ok) = await server.PostAsync("/v1/completions", _seeds[0]);
        Assert.Equal(200, okStatus);
        Assert.Equal("length", ok.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.Equal(200, (int)(await server.Http.GetAsync("/health")).StatusCode);
        await server.Drained();
    }

    /// <summary>One to three mutations of a seed body: a field's value replaced, or bytes flipped, inserted,
    /// deleted or cut off.</summary>
    private static byte[] Mutate(string json, Random rng)
    {
        int rounds = 1 + rng.Next(3);
        for (int r = 0; r < rounds; r++)
        {
            if (rng.Next(2) == 0)
            {
                // a value after a colon, replaced by one of the awkward values
                var colons = Enumerable.Range(0, json.Length).Where(i => json[i] == ':').ToArray();
                if (colons.Length == 0) continue;
                int c = colons[rng.Next(colons.Length)] + 1;
                int end = ValueEnd(json, c);
                json = json[..c] + _values[rng.Next(_values.Length)] + json[end..];
            }
            else
            {
                var bytes = Encoding.UTF8.GetBytes(json).ToList();
                if (bytes.Count == 0) continue;
                int at = rng.Next(bytes.Count);
                switch (rng.Next(4))
                {
                    case 0: bytes[at] ^= (byte)(1 << rng.Next(8)); break;
                    case 1: bytes.Insert(at, (byte)"{}[]\",:0-e\\ \u00ff"[rng.Next(13)]); break;
                    case 2: bytes.RemoveAt(at); break;
                    default: bytes.RemoveRange(at, bytes.Count - at); break;
                }
                json = Encoding.UTF8.GetString(bytes.ToArray());
            }
        }
        return Encoding.UTF8.GetBytes(json);
    }

    /// <summary>Where the JSON value starting at i ends (a string, or up to the next comma or closing bracket at its level).</summary>
    private static int ValueEnd(string json, int i)
    {
        int depth = 0;
        bool inString = false;
        for (int j = i; j < json.Length; j++)
        {
            char ch = json[j];
            if (inString)
            {
                if (ch == '\\') j++;
                else if (ch == '"') inString = false;
                continue;
            }
            if (ch == '"') inString = true;
            else if (ch is '[' or '{') depth++;
            else if (ch is ']' or '}')
            {
                if (depth == 0) return j;
                depth--;
            }
            else if (ch == ',' && depth == 0) return j;
        }
        return json.Length;
    }
}
