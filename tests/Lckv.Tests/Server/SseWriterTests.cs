using System.IO.Pipelines;
using System.Text;
using System.Text.Json;
using Lckv.Server;

namespace Lckv.Tests.Server;

/// <summary>The hand-written stream chunks are byte for byte what the serializer writes for the same objects.</summary>
public sealed class SseWriterTests
{
    private static readonly JsonSerializerOptions _json = new() { DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.Never };

    [Theory]
    [InlineData(false, false)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public void ChunksMatchTheSerializer(bool chat, bool usage)
    {
        const string id = "cmpl-0123", model = "m<&>'\"";
        const long created = 1700000000;
        string kind = chat ? "chat.completion.chunk" : "text_completion";
        var pipe = new Pipe();
        var sse = new SseWriter(pipe.Writer, id, created, chat, model, usage);
        var expected = new StringBuilder();
        void Expect(object payload) => expected.Append("data: ").Append(JsonSerializer.Serialize(payload, _json)).Append("\n\n");
        object Wrap(object choice) => usage
            ? new { id, @object = kind, created, model, choices = new[] { choice }, usage = (object?)null }
            : new { id, @object = kind, created, model, choices = new[] { choice } };

        foreach (string text in new[] { "", "plain", "é<b>&'\"\n\t\u0001 \U0001F600" })
        {
            sse.Chunk(role: null, text, finish: null);
            Expect(Wrap(chat ? new { index = 0, delta = (object)new { content = text }, logprobs = (object?)null, finish_reason = (string?)null }
                             : new { index = 0, text, logprobs = (object?)null, finish_reason = (string?)null }));
        }
        if (chat)
        {
            sse.Chunk(role: "assistant", content: "", finish: null);
            Expect(Wrap(new { index = 0, delta = (object)new { role = "assistant", content = "" }, logprobs = (object?)null, finish_reason = (string?)null }));
        }
        sse.Chunk(role: null, content: null, finish: "length");
        Expect(Wrap(chat ? new { index = 0, delta = (object)new { }, logprobs = (object?)null, finish_reason = (string?)"length" }
                         : new { index = 0, text = "", logprobs = (object?)null, finish_reason = (string?)"length" }));
        sse.Usage(5, 7);
        Expect(new { id, @object = kind, created, model, choices = Array.Empty<object>(), usage = new { prompt_tokens = 5, completion_tokens = 7, total_tokens = 12 } });
        sse.Done();
        expected.Append("data: [DONE]\n\n");

        pipe.Writer.Complete();
        using var got = new MemoryStream();
        pipe.Reader.AsStream().CopyTo(got);
        Assert.Equal(expected.ToString(), Encoding.UTF8.GetString(got.ToArray()));
    }
}
