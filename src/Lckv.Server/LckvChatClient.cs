using System.Runtime.CompilerServices;
using Lckv.Formats;
using Lckv.Generation;
using Microsoft.Extensions.AI;
using AI = Microsoft.Extensions.AI;

namespace Lckv.Server;

/// <summary>
/// An <see cref="IChatClient"/> over a <see cref="BatchScheduler"/> for in-process use: every call is a job of the
/// continuous-batching loop, so concurrent calls share its steps. The conversation becomes a prompt through the same
/// seam as the server's chat route (<see cref="ServerOptions.ChatPromptRenderer"/>); a cancelled call, or a stream its
/// consumer stops reading, has its sequence retired before the next step. The client does not own the scheduler.
/// </summary>
public sealed class LckvChatClient : IChatClient
{
    private readonly BatchScheduler _scheduler;
    private readonly TextTokenizer _tokenizer;
    private readonly Func<IReadOnlyList<Lckv.Chat.ChatMessage>, string> _render;
    private readonly bool _addBos;
    private readonly string _modelId;

    /// <param name="scheduler">runs the jobs; its tokenizer should be <paramref name="tokenizer"/></param>
    /// <param name="tokenizer">encodes the rendered prompt</param>
    /// <param name="render">the chat template: a conversation to prompt text</param>
    /// <param name="modelId">the model id responses name</param>
    /// <param name="addBos">whether the prompt gets the tokenizer's BOS token in front (when the tokenizer adds one by default)</param>
    public LckvChatClient(BatchScheduler scheduler, TextTokenizer tokenizer, Func<IReadOnlyList<Lckv.Chat.ChatMessage>, string> render, string modelId = "lckv", bool addBos = true)
    {
        _scheduler = scheduler;
        _tokenizer = tokenizer;
        _render = render;
        _modelId = modelId;
        _addBos = addBos && tokenizer.AddBosByDefault && tokenizer.BosId is not null;
    }

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<AI.ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var spec = Spec(messages, options);
        var job = _scheduler.Submit(spec, cancellationToken);
        string id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        var created = DateTimeOffset.UtcNow;
        try
        {
            await foreach (var e in job.Events.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                if (e is FinishEvent f)
                    return new ChatResponse(new AI.ChatMessage(ChatRole.Assistant, f.Text ?? "") { MessageId = id })
                    {
                        ResponseId = id, ModelId = _modelId, CreatedAt = created, FinishReason = Finish(f.Reason), Usage = Usage(f),
                    };
                if (e is FailEvent fail) throw Failed(fail, cancellationToken);
            }
            throw new InvalidOperationException("the job ended without a result");
        }
        finally
        {
            if (!job.IsDone) _scheduler.Cancel(job);
        }
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<AI.ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var spec = Spec(messages, options);
        var job = _scheduler.Submit(spec, cancellationToken);
        string id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        var created = DateTimeOffset.UtcNow;
        // text that may start a stop string is held back until the next token settles it
        var text = new HeldText(spec.StopStrings);
        try
        {
            await foreach (var e in job.Events.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                switch (e)
                {
                    case TokenEvent t:
                        string delta = text.Push(t.Text);
                        if (delta.Length > 0) yield return Update(delta);
                        break;
                    case FinishEvent f:
                        string rest = text.Finish(f.Text);
                        var last = Update(rest.Length > 0 ? rest : null);
                        last.FinishReason = Finish(f.Reason);
                        last.Contents.Add(new UsageContent(Usage(f)));
                        yield return last;
                        yield break;
                    case FailEvent fail:
                        throw Failed(fail, cancellationToken);
                }
            }
        }
        finally
        {
            // also reached when the consumer stops enumerating early
            if (!job.IsDone) _scheduler.Cancel(job);
        }

        ChatResponseUpdate Update(string? delta) => new(ChatRole.Assistant, delta)
        {
            ResponseId = id, MessageId = id, ModelId = _modelId, CreatedAt = created,
        };
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return new ChatClientMetadata("lckv", null, _modelId);
        if (serviceType == typeof(BatchScheduler)) return _scheduler;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <summary>Nothing to release: the scheduler belongs to whoever created it.</summary>
    public void Dispose() { }

    /// <summary>The job for a conversation: rendered, encoded, and the options mapped onto the sampler and stop rules.</summary>
    private JobSpec Spec(IEnumerable<AI.ChatMessage> messages, ChatOptions? options)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var conversation = messages.Select(m => new Lckv.Chat.ChatMessage(m.Role.Value, m.Text)).ToList();
        int[] prompt = LckvServer.EncodeChat(_tokenizer, _render(conversation), _addBos);
        var sampling = new SamplingParams
        {
            Temperature = options?.Temperature ?? 1f,
            TopP = options?.TopP ?? 1f,
            TopK = options?.TopK ?? 0,
            FrequencyPenalty = options?.FrequencyPenalty ?? 0f,
            PresencePenalty = options?.PresencePenalty ?? 0f,
            Seed = options?.Seed is long seed ? unchecked((ulong)seed) : null,
        };
        return new JobSpec
        {
            Prompt = prompt,
            // as on the server's chat route: without a limit a reply runs until a stop rule or the end of the context
            MaxNewTokens = options?.MaxOutputTokens ?? _scheduler.Engine.Model.ContextLength,
            Sampling = sampling,
            StopStrings = options?.StopSequences?.Where(s => s.Length > 0).ToArray() ?? [],
        };
    }

    private static ChatFinishReason Finish(FinishReason reason) => reason is FinishReason.Eos or FinishReason.StopString ? ChatFinishReason.Stop : ChatFinishReason.Length;

    private static UsageDetails Usage(FinishEvent f) => new()
    {
        InputTokenCount = f.PromptTokens, OutputTokenCount = f.CompletionTokens, TotalTokenCount = f.PromptTokens + f.CompletionTokens,
    };

    private static Exception Failed(FailEvent fail, CancellationToken token)
        => token.IsCancellationRequested ? new OperationCanceledException(token) : new LckvException(fail.Message);
}
