using System.CommandLine;
using Lckv.Cache;
using Lckv.Chat;
using Lckv.Generation;
using Lckv.Model;
using Lckv.Server;

namespace Lckv.Cli;

/// <summary>lckv serve: an OpenAI-compatible HTTP server with continuous batching over the generation engine.</summary>
public static class ServeCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var mo = new ModelOptions();
        var host = new Option<string>("--host") { Description = "address to bind (an IP address or localhost)", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "port to bind (0 = a free one)", DefaultValueFactory = _ => 8080 };
        var apiKey = new Option<string?>("--api-key") { Description = "key every /v1 route requires as 'Authorization: Bearer KEY' (default: env LCKV_API_KEY; none = open)" };
        var maxBatch = new Option<int>("--max-batch") { Description = "most sequences decoding at once", DefaultValueFactory = _ => 16 };
        var stepTokens = new Option<int>("--step-tokens") { Description = "most tokens one step evaluates (long prompts are chunked by it)", DefaultValueFactory = _ => 512 };
        var queue = new Option<int>("--queue") { Description = "most requests waiting for KV room; more get 429", DefaultValueFactory = _ => 64 };
        var name = new Option<string?>("--model-name") { Description = "model id in /v1/models and responses (default: the model folder's name)" };
        var noBos = new Option<bool>("--no-bos") { Description = "do not prepend the BOS token to text prompts" };
        var template = new Option<string?>("--chat-template") { Description = "Jinja chat template file for /v1/chat/completions (default: the model's own, from tokenizer_config.json or GGUF metadata)" };
        var cmd = new Command("serve", "serve the model over an OpenAI-compatible HTTP API (continuous batching)");
        mo.AddTo(cmd, ModelUses.All);
        var eo = EvictionOptions.AddTo(cmd);
        foreach (var o in new Option[] { host, port, apiKey, maxBatch, stepTokens, queue, name, noBos, template }) cmd.Options.Add(o);

        cmd.SetAction(p =>
        {
            int batch = p.GetValue(maxBatch), step = p.GetValue(stepTokens), waiting = p.GetValue(queue), listen = p.GetValue(port);
            if (batch < 1) throw new LckvException($"--max-batch must be at least 1, got {batch}");
            if (step < 1) throw new LckvException($"--step-tokens must be at least 1, got {step}");
            if (waiting < 1) throw new LckvException($"--queue must be at least 1, got {waiting}");
            if (listen is < 0 or > 65535) throw new LckvException($"--port must be in [0, 65535], got {listen}");
            string? folder = p.GetValue(mo.Model);
            var chat = ChatRenderer(p.GetValue(template), folder);
            var parts = Build(p, mo, eo, batch, step, waiting, budgetFor: null, stderr);
            using var model = parts.Model;
            using var pool = parts.Pool;
            var (tokenizer, scheduler, budget) = (parts.Tokenizer, parts.Scheduler, parts.Pool.CapacityBytes);
            var options = new ServerOptions
            {
                Host = p.GetValue(host)!, Port = listen,
                ApiKey = p.GetValue(apiKey) ?? (Environment.GetEnvironmentVariable("LCKV_API_KEY") is { Length: > 0 } k ? k : null),
                ModelName = p.GetValue(name) ?? (folder is null ? p.GetValue(mo.Preset)! : Path.GetFileNameWithoutExtension(Path.TrimEndingDirectorySeparator(folder))),
                AddBos = !p.GetValue(noBos),
                // without a chat template /v1/chat/completions answers 400 "no chat template"
                ChatPromptRenderer = chat,
            };
            var server = LckvServer.StartAsync(scheduler, tokenizer, options).GetAwaiter().GetResult();
            try
            {
                stderr.WriteLine($"lckv serve: {options.ModelName} on {server.Address} (batch {batch}, KV budget {pool.TotalBlocks} blocks, {budget / 1048576.0:F1} MiB{(tokenizer is null ? ", no tokenizer: token-id prompts only" : "")}{(options.ApiKey is null ? "" : ", API key required")}{(chat is null ? ", no chat template: completions only" : "")}); Ctrl-C stops");
                server.WaitForShutdownAsync().GetAwaiter().GetResult();
            }
            finally
            {
                server.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
            return 0;
        });
        return cmd;
    }

    /// <summary>
    /// The chat seam over a Jinja chat template: the file given, else the model's own (a folder's tokenizer_config.json
    /// or chat_template.jinja, a GGUF file's tokenizer.chat_template); null when there is none. The template sees the
    /// model's bos/eos token strings and add_generation_prompt.
    /// </summary>
    internal static Func<IReadOnlyList<ChatMessage>, string>? ChatRenderer(string? file, string? model)
    {
        ChatTemplate? template;
        if (file is not null)
        {
            if (!File.Exists(file)) throw new LckvException(Directory.Exists(file) ? $"--chat-template '{file}' is a folder, expected a template file" : $"--chat-template '{file}' does not exist");
            template = ChatTemplate.Parse(File.ReadAllText(file));
        }
        else template = model is null ? null : ChatTemplate.FromCheckpoint(model);
        if (template is null) return null;
        var (bos, eos) = model is null ? (null, null) : ChatTemplate.ReadSpecialTokens(model);
        return messages => template.Render(new ChatTemplateInput
        {
            Messages = messages,
            AddGenerationPrompt = true, BosToken = bos ?? "", EosToken = eos ?? "",
        });
    }

    /// <summary>The model, tokenizer, KV pool and scheduler a server runs on.</summary>
    /// <param name="NewEngine">another engine like the scheduler's, over a pool of its own of the same size (bench
    /// serve measures the bare engine with it; the caller disposes the pool)</param>
    internal sealed record Parts(LlamaModel Model, Formats.TextTokenizer? Tokenizer, KvBlockPool Pool, BatchScheduler Scheduler,
        IReadOnlyList<int> StopIds, Func<(GenerationEngine Engine, KvBlockPool Pool)> NewEngine);

    /// <summary>
    /// Loads the model the options name and builds the engine a server runs: batch sequences at most, steps of at most
    /// step tokens (a layout or store that evaluates prompts whole gets room for a prompt of the whole context), a KV
    /// pool of budgetFor's sequences of its tokens each, else --kv-budget, else batch whole-context sequences.
    /// </summary>
    internal static Parts Build(ParseResult p, ModelOptions mo, EvictionOptions eo, int batch, int step, int queue, (int Sequences, int Tokens)? budgetFor, TextWriter stderr)
    {
        var eviction = eo.Parse(p);
        var model = mo.LoadModel(p, stderr, eviction);
        eviction = eo.WithLess(p, eviction, model.Config, model.Map, stderr);
        try
        {
            var tokenizer = mo.LoadTokenizer(p, required: false);
            string? folder = p.GetValue(mo.Model);
            var genConfig = folder is not null && Directory.Exists(folder) ? Formats.GenerationConfig.LoadIfPresent(Path.Combine(folder, "generation_config.json")) : null;
            var engineOptions = new EngineOptions { MaxStepTokens = step, MaxSequences = batch, MaxPromptTokens = model.ContextLength };
            int block = mo.Block(p);
            var layout = model.KvLayout(block, mo.KvStorage(p, model));
            int stepRows = engineOptions.StepRows(model.Map);
            long full = model.KvBlocksFor(model.ContextLength, block, stepRows, eviction);
            long budget = budgetFor is var (n, tokens) ? n * model.KvBlocksFor(tokens, block, stepRows, eviction) * layout.BlockBytes
                : p.GetValue(mo.KvBudget) is double mib ? (long)(mib * 1048576) : batch * full * layout.BlockBytes;
            (GenerationEngine, KvBlockPool) NewEngine()
            {
                var pool = new KvBlockPool(layout, budget);
                return (new GenerationEngine(model, model.CreateCache(pool, stepRows, eviction), engineOptions), pool);
            }
            var (engine, pool) = NewEngine();
            var stopIds = GenerateCommand.StopIds(tokenizer, genConfig, model);
            return new Parts(model, tokenizer, pool, new BatchScheduler(engine, tokenizer, stopIds, queue), stopIds, NewEngine);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }
}
