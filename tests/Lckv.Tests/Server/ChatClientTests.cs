using System.ClientModel;
using System.Text;
using Lckv.Generation;
using Lckv.Server;
using Microsoft.Extensions.AI;
using OpenAI;

namespace Lckv.Tests.Server;

/// <summary>
/// <see cref="LckvChatClient"/> over the server's scheduler: whole and streamed replies equal the Generator's for the
/// rendered prompt, the options reach the sampler and stop rules, concurrent calls batch and complete, and a cancelled
/// call frees its blocks. Then the server itself through Microsoft.Extensions.AI's adapter of the official OpenAI client.
/// </summary>
public sealed class ChatClientTests
{
    private static readonly List<Microsoft.Extensions.AI.ChatMessage> _conversation =
        [new(ChatRole.System, "Be brief."), new(ChatRole.User, "Tell a story.")];

    private static readonly string _rendered = ServerGenerationTests.Render([new("system", "Be brief."), new("user", "Tell a story.")]);

    private static LckvChatClient Client(TestServer s) => new(s.Scheduler, s.Tokenizer, ServerGenerationTests.Render, "tiny");

    [SharedFact]
    public async Task WholeAndStreamedRepliesEqualTheGeneratorsAndTheOptionsApply()
    {
        int[] prompt = ServerGenerationTests.Encode(_rendered);
        string expected = ServerGenerationTests.Alone(prompt, 16, SamplingParams.Greedy);
        await using var s = await TestServer.StartAsync();
        IChatClient client = Client(s);
        Assert.Equal("tiny", client.GetService<ChatClientMetadata>()?.DefaultModelId);

        var greedy = new ChatOptions { MaxOutputTokens = 16, Temperature = 0 };
        var reply = await client.GetResponseAsync(_conversation, greedy);
        Assert.Equal(expected, reply.Text);
        Assert.Equal(ChatRole.Assistant, reply.Messages[0].Role);
        Assert.Equal(prompt.Length, reply.Usage?.InputTokenCount);
        Assert.Equal(reply.Usage!.InputTokenCount + reply.Usage.OutputTokenCount, reply.Usage.TotalTokenCount);
        Assert.Equal(reply.Usage.OutputTokenCount == 16 ? ChatFinishReason.Length : ChatFinishReason.Stop, reply.FinishReason);
        Assert.Equal("tiny", reply.ModelId);

        var updates = new List<ChatResponseUpdate>();
        await foreach (var update in client.GetStreamingResponseAsync(_conversation, greedy)) updates.Add(update);
        Assert.Equal(expected, string.Concat(updates.Select(u => u.Text)));
        Assert.True(updates.Count > 2);
        var streamed = updates.ToChatResponse();
        Assert.Equal(expected, streamed.Text);
        Assert.Equal(reply.FinishReason, streamed.FinishReason);
        Assert.Equal(reply.Usage.OutputTokenCount, streamed.Usage?.OutputTokenCount);
        Assert.Equal(prompt.Length, streamed.Usage?.InputTokenCount);

        // a stop sequence cuts the reply, streamed too (held-back text never shows)
        string stop = expected.Substring(expected.Length / 2, 2);
        var stopped = new ChatOptions { MaxOutputTokens = 16, Temperature = 0, StopSequences = [stop] };
        string cut = expected[..expected.IndexOf(stop, StringComparison.Ordinal)];
        Assert.Equal(cut, (await client.GetResponseAsync(_conversation, stopped)).Text);
        var stoppedStream = new StringBuilder();
        await foreach (var update in client.GetStreamingResponseAsync(_conversation, stopped)) stoppedStream.Append(update.Text);
        Assert.Equal(cut, stoppedStream.ToString());

        // seeds and the sampling settings reach the sampler
        var seeded = new ChatOptions { MaxOutputTokens = 12, Temperature = 1.1f, TopP = 0.9f, TopK = 40, Seed = 77, FrequencyPenalty = 0.3f, PresencePenalty = 0.2f };
        string a = (await client.GetResponseAsync(_conversation, seeded)).Text;
        Assert.Equal(a, (await client.GetResponseAsync(_conversation, seeded)).Text);
        Assert.Equal(ServerGenerationTests.Alone(prompt, 12, new SamplingParams
        {
            Temperature = 1.1f, TopP = 0.9f, TopK = 40, Seed = 77, FrequencyPenalty = 0.3f, PresencePenalty = 0.2f,
        }), a);
        await s.Drained();
    }

    [SharedFact]
    public async Task ConcurrentCallsBatchAndCompleteAsEachAlone()
    {
        int[] prompt = ServerGenerationTests.Encode(_rendered);
        int[] lengths = [6, 10, 14, 18];
        var expected = lengths.Select(n => ServerGenerationTests.Alone(prompt, n, SamplingParams.Greedy)).ToArray();
        await using var s = await TestServer.StartAsync();
        var client = Client(s);
        // held until all four are admitted, so that they share every step
        s.Scheduler.Paused = true;
        var calls = lengths.Select((n, i) => i % 2 == 0
            ? client.GetResponseAsync(_conversation, new ChatOptions { MaxOutputTokens = n, Temperature = 0 })
            : client.GetStreamingResponseAsync(_conversation, new ChatOptions { MaxOutputTokens = n, Temperature = 0 }).ToChatResponseAsync()).ToArray();
        await TestServer.Eventually(() => s.Scheduler.Running == lengths.Length, "the four calls are admitted");
        s.Scheduler.Paused = false;
        var replies = await Task.WhenAll(calls).WaitAsync(TestServer.Timeout);
        for (int i = 0; i < lengths.Length; i++) Assert.Equal(expected[i], replies[i].Text);
        await s.Drained();
    }

    [SharedFact]
    public async Task ACancelledCallFreesItsBlocks()
    {
        await using var s = await TestServer.StartAsync(eos: false);
        var client = Client(s);
        int steps = 0;
        s.Scheduler.AfterStep = () => { if (++steps % 10 == 0) s.Scheduler.Paused = true; };
        var options = new ChatOptions { MaxOutputTokens = 200, Temperature = 0 };

        // a whole-reply call, cancelled while the engine holds it mid-generation
        using (var cancel = new CancellationTokenSource(TestServer.Timeout))
        {
            var call = client.GetResponseAsync(_conversation, options, cancel.Token);
            await TestServer.Eventually(() => s.Scheduler.Paused, "ten steps are taken");
            Assert.True(s.Pool.UsedBlocks > 0);
            cancel.Cancel();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => call);
            await TestServer.Eventually(() => s.Pool.UsedBlocks == 0 && s.Scheduler.Running == 0, "the cancelled call is retired", TimeSpan.FromSeconds(10));
            Assert.Equal(10, steps);
        }

        // a stream, cancelled between updates
        s.Scheduler.Paused = false;
        using (var cancel = new CancellationTokenSource(TestServer.Timeout))
        {
            int received = 0;
            await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
            {
                await foreach (var update in client.GetStreamingResponseAsync(_conversation, options, cancel.Token))
                    if (++received == 3)
                    {
                        await TestServer.Eventually(() => s.Scheduler.Paused, "twenty steps are taken");
                        cancel.Cancel();
                    }
            });
            await TestServer.Eventually(() => s.Pool.UsedBlocks == 0 && s.Scheduler.Running == 0, "the cancelled stream is retired", TimeSpan.FromSeconds(10));
            Assert.Equal(20, steps);
        }

        // a stream its consumer stops reading
        s.Scheduler.Paused = false;
        await foreach (var update in client.GetStreamingResponseAsync(_conversation, options))
            if (update.Text.Length > 0) break;
        await TestServer.Eventually(() => s.Pool.UsedBlocks == 0 && s.Scheduler.Running == 0, "the abandoned stream is retired", TimeSpan.FromSeconds(10));
        Assert.True(steps < 40);
        Assert.Equal(0, s.Engine.PromisedBlocks);
        var metrics = await ServerMetricsTests.Scrape(s);
        Assert.Equal(3, metrics["lckv_requests_finished_total{reason=\"cancelled\"}"]);
    }

    [SharedFact]
    public async Task TheServerServesMicrosoftExtensionsAiThroughTheOpenAiClient()
    {
        int[] prompt = ServerGenerationTests.Encode(_rendered);
        string expected = ServerGenerationTests.Alone(prompt, 16, SamplingParams.Greedy);
        await using var s = await TestServer.StartAsync(apiKey: "sk-test", chat: ServerGenerationTests.Render);
        IChatClient client = new OpenAI.Chat.ChatClient("tiny", new ApiKeyCredential("sk-test"), new OpenAIClientOptions
        {
            Endpoint = new Uri(s.Server.Address, "/v1"), NetworkTimeout = TestServer.Timeout,
        }).AsIChatClient();
        var options = new ChatOptions { MaxOutputTokens = 16, Temperature = 0 };

        var reply = await client.GetResponseAsync(_conversation, options);
        Assert.Equal(expected, reply.Text);
        Assert.Equal(prompt.Length, reply.Usage?.InputTokenCount);
        Assert.Equal(reply.Usage!.OutputTokenCount == 16 ? ChatFinishReason.Length : ChatFinishReason.Stop, reply.FinishReason);

        var streamed = await client.GetStreamingResponseAsync(_conversation, options).ToChatResponseAsync();
        Assert.Equal(expected, streamed.Text);
        Assert.Equal(reply.FinishReason, streamed.FinishReason);
        Assert.Equal(prompt.Length, streamed.Usage?.InputTokenCount);
        Assert.Equal(reply.Usage.OutputTokenCount, streamed.Usage?.OutputTokenCount);

        // the in-process client and the HTTP one agree
        Assert.Equal(reply.Text, (await Client(s).GetResponseAsync(_conversation, options)).Text);
        await s.Drained();
    }
}
