using Lckv.Cache;
using Lckv.Formats;
using Lckv.Generation;
using Lckv.Model;
using Lckv.Numerics;

namespace Lckv.Tests.Generation;

/// <summary>
/// The generation engine: sequences admitted while others decode get what they get alone (standard and LCKV
/// layouts), admission keeps its KV promises, a chunked prompt equals an unchunked one, and the stop rules end
/// sequences with their reasons.
/// </summary>
public sealed class EngineTests
{
    private static ModelConfig Tiny(string layout = "llama", int vocab = 64, int context = 256) => new()
    {
        ModelType = ModelConfig.LckvLlamaType, LayerTypes = Layouts.LayerTypes(layout, 6),
        HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 6, NumAttentionHeads = 4, NumKeyValueHeads = 2,
        HeadDim = 8, VocabSize = vocab, MaxPositionEmbeddings = context, BosTokenId = 1, EosTokenIds = [2], TorchDtype = "float32",
        // few plan iterations, so that a prompt through the plan differs from one evaluated token by token
        ForwardPasses = 2, BackwardPasses = 1,
    };

    private static LlamaModel Model(string layout = "llama", int vocab = 64, int context = 256, ulong seed = 7)
    {
        var config = Tiny(layout, vocab, context);
        return new LlamaModel(config, ModelWeights.Random(config, LayerMap.Parse(config.LayerTypes, 6), DType.F32, seed), $"random:{layout}");
    }

    private static int[] Prompt(int length, ulong seed, int vocab = 64)
    {
        var rng = new SplitMix64(seed);
        return Enumerable.Range(0, length).Select(_ => 3 + (int)(rng.Next() % (ulong)(vocab - 3))).ToArray();
    }

    private static GenerationRequest Greedy(int[] prompt, int maxNew) => new() { Prompt = prompt, MaxNewTokens = maxNew, Sampling = SamplingParams.Greedy };

    private sealed class Setup : IDisposable
    {
        public required LlamaModel Model { get; init; }
        public required KvBlockPool Pool { get; init; }
        public required GenerationEngine Engine { get; init; }
        public void Dispose() { Pool.Dispose(); Model.Dispose(); }
    }

    private static Setup Open(string layout = "llama", EngineOptions? options = null, long blocks = 4096, int context = 256, int vocab = 64)
    {
        var model = Model(layout, vocab, context);
        options ??= new EngineOptions { MaxStepTokens = 64, MaxSequences = 4 };
        var kv = model.KvLayout(4, DType.F32);
        var pool = new KvBlockPool(kv, blocks * kv.BlockBytes);
        var engine = new GenerationEngine(model, model.CreateCache(pool, options.StepRows(model.Map)), options);
        return new Setup { Model = model, Pool = pool, Engine = engine };
    }

    /// <summary>Greedy output of one prompt run on its own.</summary>
    private static int[] Alone(string layout, int[] prompt, int maxNew) => Alone(layout, prompt, maxNew, out _);

    /// <summary>Greedy output of one prompt run on its own, and the logits that chose its first token.</summary>
    private static int[] Alone(string layout, int[] prompt, int maxNew, out float[] firstLogits)
    {
        using var s = Open(layout);
        var logits = new List<float[]>();
        var seq = s.Engine.Admit(Greedy(prompt, maxNew) with { OnLogits = (_, _, row) => logits.Add(row.ToArray()) });
        s.Engine.RunToEnd();
        firstLogits = logits[0];
        return seq.Output.ToArray();
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("lckv-w2")] // layers 1..4 read layer 4: prompts go through the iteration plan
    [InlineData("yoco")]
    public void APromptAdmittedWhileOthersDecodeGivesWhatItGivesAlone(string layout)
    {
        // prompts longer than m+b (3), so an upward layout's prompt takes the plan, alone as in the mix
        int[][] prompts = [Prompt(12, 1), Prompt(20, 2), Prompt(15, 3)];
        const int maxNew = 10;
        var firstLogits = new float[prompts.Length][];
        var alone = prompts.Select((p, i) => Alone(layout, p, maxNew, out firstLogits[i])).ToArray();

        using var s = Open(layout);
        var e = s.Engine;
        var mixedLogits = new float[prompts.Length][];
        GenerationRequest Request(int i) => Greedy(prompts[i], maxNew) with { OnLogits = (_, _, row) => mixedLogits[i] ??= row.ToArray() };
        var seqs = new List<EngineSequence> { e.Admit(Request(0)) };
        for (int i = 0; i < 3; i++) e.Step();
        seqs.Add(e.Admit(Request(1)));
        long before = e.Evaluations;
        var mixed = e.Step();
        // one evaluation of the layer stack for a standard layout; the plan's and the decode's for an upward one: never
        // the whole batch token by token
        Assert.Equal(s.Model.Map.AnyAttendsTop ? 2 : 1, e.Evaluations - before);
        Assert.Equal(20, mixed.PromptTokens); // the new prompt, whole
        Assert.Equal(1, mixed.DecodeTokens);  // beside the decoding sequence
        Assert.Equal(2, mixed.Sampled);
        e.Step();
        seqs.Add(e.Admit(Request(2)));
        e.RunToEnd();

        for (int i = 0; i < prompts.Length; i++)
        {
            double diff = 0;
            for (int j = 0; j < firstLogits[i].Length; j++) diff = Math.Max(diff, Math.Abs(firstLogits[i][j] - mixedLogits[i][j]));
            Assert.True(diff <= 1e-5, $"sequence {i}: the prompt's logits differ by {diff}");
            Assert.Equal(alone[i], seqs[i].Output);
            Assert.Equal(FinishReason.Length, seqs[i].Finish);
            Assert.True(seqs[i].IsRetired);
        }
        Assert.Equal(s.Pool.TotalBlocks, s.Pool.FreeBlocks);
        Assert.Equal(0, e.PromisedBlocks);
    }

    [Fact]
    public void ALongPromptIsChunkedAcrossStepsAndMatchesUnchunked()
    {
        var prompt = Prompt(40, 11);
        float[] Logits(int chunk, out List<StepReport> reports)
        {
            using var s = Open(options: new EngineOptions { MaxStepTokens = chunk, MaxSequences = 2 });
            var all = new float[prompt.Length * s.Model.Vocab];
            var seq = s.Engine.Admit(new GenerationRequest
            {
                Prompt = prompt, Logits = LogitsRows.All,
                OnLogits = (_, first, rows) => rows.CopyTo(all.AsSpan(first * s.Model.Vocab)),
            });
            reports = [];
            while (s.Engine.HasWork) reports.Add(s.Engine.Step());
            Assert.Equal(prompt.Length, seq.Position);
            return all;
        }
        var whole = Logits(64, out var one);
        var chunked = Logits(7, out var steps);
        Assert.Single(one);
        Assert.Equal(6, steps.Count); // 40 tokens in chunks of 7
        Assert.All(steps, r => Assert.True(r.PromptTokens <= 7));
        double diff = 0;
        for (int i = 0; i < whole.Length; i++) diff = Math.Max(diff, Math.Abs(whole[i] - chunked[i]));
        Assert.True(diff <= 1e-4, $"max abs diff {diff}");

        // generating: a chunked prompt beside a decoding sequence takes the rows the decoder leaves
        var expected = Alone("llama", prompt, 6);
        using var g = Open(options: new EngineOptions { MaxStepTokens = 8, MaxSequences = 2 });
        var first = g.Engine.Admit(Greedy(Prompt(5, 12), 20));
        g.Engine.Step();
        var second = g.Engine.Admit(Greedy(prompt, 6));
        var step = g.Engine.Step();
        Assert.Equal((7, 1), (step.PromptTokens, step.DecodeTokens));
        g.Engine.RunToEnd();
        Assert.Equal(expected, second.Output);
        Assert.Equal(20, first.Output.Count);
    }

    [Fact]
    public void AdmissionKeepsItsPromises()
    {
        // a request of 10 + 6 tokens takes 4 blocks of 4 positions in each of 6 KV layers: 24 blocks; the pool holds two
        using var s = Open(blocks: 50, options: new EngineOptions { MaxStepTokens = 64, MaxSequences = 3 });
        var e = s.Engine;
        Assert.Equal(24, e.BlocksFor(Greedy(Prompt(10, 1), 6)));

        var never = Assert.Throws<LckvException>(() => e.TryAdmit(Greedy(Prompt(10, 1), 100), out _));
        Assert.Contains("needs 168 KV blocks", never.Message); // 110 tokens: 28 blocks per layer
        Assert.Contains("50 in all", never.Message);

        var a = e.Admit(Greedy(Prompt(10, 1), 6));
        var b = e.Admit(Greedy(Prompt(10, 2), 6));
        Assert.Equal(48, e.PromisedBlocks);
        Assert.False(e.TryAdmit(Greedy(Prompt(10, 3), 6), out var waiting));
        Assert.Null(waiting);
        Assert.Contains("are free and unpromised", Assert.Throws<LckvException>(() => e.Admit(Greedy(Prompt(10, 3), 6))).Message);

        // the promise turns into reservations step by step; what is free stays covered
        e.Step();
        Assert.Equal(2 * 18, s.Pool.UsedBlocks); // the prompts' 10 positions reserved (3 blocks a layer)
        Assert.Equal(48 - 36, e.PromisedBlocks);
        Assert.Equal(2, e.AvailableBlocks);
        Assert.False(e.TryAdmit(Greedy(Prompt(10, 3), 6), out _));

        e.Retire(a);
        Assert.True(e.TryAdmit(Greedy(Prompt(10, 3), 6), out var c));
        e.RunToEnd();
        Assert.Equal(6, b.Output.Count);
        Assert.Equal(6, c!.Output.Count);
        Assert.Empty(e.Sequences);
        Assert.Equal(0, e.PromisedBlocks);
        Assert.Equal(s.Pool.TotalBlocks, s.Pool.FreeBlocks);

        // the engine's sequence cap
        using var one = Open(options: new EngineOptions { MaxSequences = 1 });
        one.Engine.Admit(Greedy(Prompt(4, 1), 2));
        Assert.False(one.Engine.TryAdmit(Greedy(Prompt(4, 2), 2), out _));
        Assert.Contains("already holds its 1", Assert.Throws<LckvException>(() => one.Engine.Admit(Greedy(Prompt(4, 2), 2))).Message);
    }

    [Fact]
    public void AnUpwardLayoutRefusesAPromptLongerThanItsStep()
    {
        using var s = Open("lckv-w2", new EngineOptions { MaxStepTokens = 8, MaxPromptTokens = 16 });
        Assert.Equal(16, s.Engine.StepRows);
        s.Engine.Admit(Greedy(Prompt(16, 1), 2));
        Assert.Contains("raise MaxPromptTokens", Assert.Throws<LckvException>(() => s.Engine.Admit(Greedy(Prompt(17, 1), 2))).Message);
    }

    [Fact]
    public void StopRulesEndSequencesWithTheirReasons()
    {
        var prompt = Prompt(8, 21);
        var free = Alone("llama", prompt, 12);
        // the last token that did not come before it, as the stop id
        int k = Enumerable.Range(0, free.Length).Last(i => !free[..i].Contains(free[i]));

        using var s = Open(context: 24);
        var e = s.Engine;
        var streamed = new List<int>();
        var length = e.Admit(Greedy(prompt, 5) with { OnToken = (_, token, text) => streamed.Add(token) });
        var eos = e.Admit(Greedy(prompt, 12) with { StopIds = [free[k]] });
        var context = e.Admit(Greedy(Prompt(20, 22), 10));
        var finished = new List<EngineSequence>();
        while (e.HasWork)
        {
            e.Step();
            finished.AddRange(e.Finished);
            foreach (var f in e.Finished) e.Retire(f);
        }
        Assert.Equal(FinishReason.Length, length.Finish);
        Assert.Equal(free[..5], length.Output);
        Assert.Equal(free[..5], streamed);
        Assert.Equal(FinishReason.Eos, eos.Finish);
        Assert.Equal(free[..k], eos.Output); // the stop id is not part of the output
        Assert.Equal(FinishReason.Context, context.Finish);
        Assert.Equal(24 - 20 + 1, context.Output.Count); // the last token is chosen but never evaluated
        Assert.Equal(3, finished.Count);
        Assert.All(new[] { length, eos, context }, x => Assert.Contains(x, finished));

        // max new tokens 0: the prompt is evaluated, nothing is sampled
        var none = e.Admit(Greedy(prompt, 0));
        e.RunToEnd();
        Assert.Equal(FinishReason.Length, none.Finish);
        Assert.Empty(none.Output);
        Assert.Equal(s.Pool.TotalBlocks, s.Pool.FreeBlocks);
    }

    [SharedFact]
    public void AStopStringCutsTheTextAndEndsTheSequence()
    {
        var tokenizer = TextTokenizer.Load(SharedData.Path("tokenizers", "en4k.model"));
        int vocab = tokenizer.VocabSize;
        var prompt = Prompt(6, 31, vocab);
        string Run(GenerationRequest r, out EngineSequence seq, out string streamed)
        {
            using var s = Open(vocab: vocab);
            var pieces = new System.Text.StringBuilder();
            seq = s.Engine.Admit(r with { Tokenizer = tokenizer, OnToken = (_, _, text) => pieces.Append(text) });
            s.Engine.RunToEnd();
            streamed = pieces.ToString();
            return seq.Text!;
        }
        string full = Run(Greedy(prompt, 16), out var whole, out _);
        Assert.Equal(tokenizer.Decode(whole.Output.ToArray()), full);
        Assert.True(full.Length >= 8, $"text '{full}'");
        string stop = full.Substring(full.Length / 2, 2);
        int cut = full.IndexOf(stop, StringComparison.Ordinal);
        string text = Run(Greedy(prompt, 16) with { StopStrings = [stop] }, out var stopped, out var streamedText);
        Assert.Equal(FinishReason.StopString, stopped.Finish);
        Assert.Equal(full[..cut], text);
        Assert.Equal(text, streamedText);
        Assert.True(stopped.Output.Count < whole.Output.Count);
    }

    [Fact]
    public void TeacherForcedSequencesTakeFedTokens()
    {
        var ids = Prompt(30, 41);
        using var s = Open(options: new EngineOptions { MaxStepTokens = 16, MaxSequences = 2 });
        int v = s.Model.Vocab;
        var fed = new float[ids.Length * v];
        var seq = s.Engine.Admit(new GenerationRequest
        {
            Prompt = ids[..10], MaxNewTokens = 20, Logits = LogitsRows.All,
            OnLogits = (_, first, rows) => rows.CopyTo(fed.AsSpan(first * v)),
        });
        while (s.Engine.HasWork) s.Engine.Step();
        s.Engine.Feed(seq, ids.AsSpan(10, 15));
        while (s.Engine.HasWork) s.Engine.Step();
        for (int i = 25; i < 30; i++)
        {
            s.Engine.Feed(seq, ids.AsSpan(i, 1));
            Assert.Equal(1, s.Engine.Step().DecodeTokens);
        }
        Assert.Throws<LckvException>(() => s.Engine.Feed(seq, ids.AsSpan(0, 1))); // past the 30 it was admitted with
        s.Engine.Retire(seq);

        // the same tokens as one prompt
        var once = new float[ids.Length * v];
        var whole = s.Engine.Admit(new GenerationRequest
        {
            Prompt = ids, Logits = LogitsRows.All, OnLogits = (_, first, rows) => rows.CopyTo(once.AsSpan(first * v)),
        });
        while (s.Engine.HasWork) s.Engine.Step();
        s.Engine.Retire(whole);
        double diff = 0;
        for (int i = 0; i < once.Length; i++) diff = Math.Max(diff, Math.Abs(once[i] - fed[i]));
        Assert.True(diff <= 1e-4, $"max abs diff {diff}");
    }

    [Fact]
    public void ADecodeStepAllocatesNothing()
    {
        using var s = Open(options: new EngineOptions { MaxStepTokens = 64, MaxSequences = 3 });
        var e = s.Engine;
        for (int i = 0; i < 3; i++) e.Admit(Greedy(Prompt(5 + i, (ulong)i), 200) with { OnToken = (_, _, _) => { } });
        for (int i = 0; i < 4; i++) e.Step(); // prefill and the first decode steps (warm)
        Assert.Equal(0, Allocations.Least(() => e.Step()));
        Assert.Equal(3, e.Step().DecodeTokens);
    }
}
