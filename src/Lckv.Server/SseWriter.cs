using System.Buffers;
using System.IO.Pipelines;
using System.Text.Json;

namespace Lckv.Server;

/// <summary>
/// One stream's server-sent events, written into the response's pipe without flushing (the caller flushes once per
/// batch of events). The chunks every token sends are written by hand with a reused <see cref="Utf8JsonWriter"/>:
/// no reflection, no intermediate string; the bytes are those <see cref="JsonSerializer"/> writes for the same
/// anonymous objects (same property order, same escaping).
/// </summary>
internal sealed class SseWriter
{
    private static readonly JsonSerializerOptions _json = new() { DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.Never };
    private static readonly JsonEncodedText _id = JsonEncodedText.Encode("id"), _objectName = JsonEncodedText.Encode("object"),
        _created = JsonEncodedText.Encode("created"), _model = JsonEncodedText.Encode("model"), _choices = JsonEncodedText.Encode("choices"),
        _index = JsonEncodedText.Encode("index"), _delta = JsonEncodedText.Encode("delta"), _role = JsonEncodedText.Encode("role"),
        _content = JsonEncodedText.Encode("content"), _text = JsonEncodedText.Encode("text"), _logprobs = JsonEncodedText.Encode("logprobs"),
        _finishReason = JsonEncodedText.Encode("finish_reason"), _usageName = JsonEncodedText.Encode("usage"),
        _promptTokens = JsonEncodedText.Encode("prompt_tokens"), _completionTokens = JsonEncodedText.Encode("completion_tokens"),
        _totalTokens = JsonEncodedText.Encode("total_tokens");

    private readonly PipeWriter _pipe;
    private readonly Utf8JsonWriter _writer;
    private readonly JsonEncodedText _idValue, _objectValue, _modelValue;
    private readonly long _createdValue;
    private readonly bool _chat, _includeUsage;

    public SseWriter(PipeWriter pipe, string id, long created, bool chat, string model, bool includeUsage)
    {
        _pipe = pipe;
        _writer = new Utf8JsonWriter(pipe, new JsonWriterOptions { SkipValidation = true });
        _idValue = JsonEncodedText.Encode(id);
        _objectValue = JsonEncodedText.Encode(chat ? "chat.completion.chunk" : "text_completion");
        _modelValue = JsonEncodedText.Encode(model);
        _createdValue = created;
        _chat = chat;
        _includeUsage = includeUsage;
    }

    /// <summary>A choice chunk without log-probabilities: chat's delta {role?, content?} (neither: {}), or
    /// completions' text (content null: "").</summary>
    public void Chunk(string? role, string? content, string? finish)
    {
        var w = Begin();
        w.WriteStartObject();
        w.WriteNumber(_index, 0);
        if (_chat)
        {
            w.WriteStartObject(_delta);
            if (role is not null) w.WriteString(_role, role);
            if (content is not null) w.WriteString(_content, content);
            w.WriteEndObject();
        }
        else w.WriteString(_text, content ?? "");
        w.WriteNull(_logprobs);
        if (finish is null) w.WriteNull(_finishReason);
        else w.WriteString(_finishReason, finish);
        w.WriteEndObject();
        w.WriteEndArray();
        if (_includeUsage) w.WriteNull(_usageName);
        End();
    }

    /// <summary>The closing usage chunk (stream_options.include_usage): no choices.</summary>
    public void Usage(int prompt, int completion)
    {
        var w = Begin();
        w.WriteEndArray();
        w.WriteStartObject(_usageName);
        w.WriteNumber(_promptTokens, prompt);
        w.WriteNumber(_completionTokens, completion);
        w.WriteNumber(_totalTokens, prompt + completion);
        w.WriteEndObject();
        End();
    }

    /// <summary>Any other event, serialized by reflection (log-probabilities, errors: not per token on the fast path).</summary>
    public void Object(object payload)
    {
        _pipe.Write("data: "u8);
        _pipe.Write(JsonSerializer.SerializeToUtf8Bytes(payload, _json));
        _pipe.Write("\n\n"u8);
    }

    public void Done() => _pipe.Write("data: [DONE]\n\n"u8);

    // "data: {id, object, created, model, choices: [" ... the caller writes the choices
    private Utf8JsonWriter Begin()
    {
        _pipe.Write("data: "u8);
        var w = _writer;
        w.Reset(_pipe);
        w.WriteStartObject();
        w.WriteString(_id, _idValue);
        w.WriteString(_objectName, _objectValue);
        w.WriteNumber(_created, _createdValue);
        w.WriteString(_model, _modelValue);
        w.WriteStartArray(_choices);
        return w;
    }

    private void End()
    {
        _writer.WriteEndObject();
        _writer.Flush(); // into the pipe's buffer, not onto the wire
        _pipe.Write("\n\n"u8);
    }
}
