using System.Text.Json;
using Lckv.Cli;
using Lckv.Diagnostics;
using Lckv.Generation;
using Lckv.Tests.Formats;
using static Lckv.Tests.Cli.CliTests;

namespace Lckv.Tests.Cli;

/// <summary>The CLI-hardening issue's options, names and output: one meaning per option name, only the options a
/// command uses, old spellings that warn, and output a new user reads without stumbling.</summary>
public sealed class CliNamesAndOutputTests
{
    private static string Golden(string name) => SharedData.Path("golden", name);
    private static string Tokenizer => SharedData.Path("tokenizers", "en4k.model");

    [Fact]
    public void CommandsRefuseTheModelOptionsTheyDoNotUse()
    {
        using var dir = new TempDir();
        string ids = dir.WriteText("ids.txt", "1 2 3 4");
        // each used to be accepted and ignored
        AssertOneLineError(Run("perplexity", "--preset", "small", "--ids-file", ids, "--kv-budget", "4"), "--kv-budget");
        AssertOneLineError(Run("perplexity", "--preset", "small", "--ids-file", ids, "--block-size", "32"), "--block-size");
        AssertOneLineError(Run("perplexity", "--preset", "small", "--ids-file", ids, "--tokenizer", ids), "--tokenizer applies to --file");
        AssertOneLineError(Run("bench", "--preset", "small", "--kv-budget", "4"), "--kv-budget");
        AssertOneLineError(Run("bench", "--preset", "small", "--tokenizer", ids), "--tokenizer");
        AssertOneLineError(Run("bench", "serve", "--preset", "small", "--kv-budget", "4"), "--kv-budget");
        foreach (var option in new[] { "--kv-budget", "--threads", "--tokenizer", "--weight-seed", "--allow-long-context" })
        {
            string[] value = option == "--allow-long-context" ? [] : [option == "--tokenizer" ? ids : "4"];
            AssertOneLineError(Run(["info", "--preset", "small", option, .. value]), option);
        }
        // what info does take, it uses
        var r = Run("info", "--preset", "small", "--kv-dtype", "int8", "--block-size", "32", "--json");
        Assert.True(r.Code == 0, r.Err);
        using var doc = JsonDocument.Parse(r.Out);
        Assert.Equal("int8", doc.RootElement.GetProperty("kv_dtype").GetString());
        Assert.Equal(32, doc.RootElement.GetProperty("kv_block_size").GetInt32());
    }

    [Fact]
    public void HelpAndUsageSayLckv()
    {
        var root = Run("--help");
        Assert.Equal(0, root.Code);
        Assert.Contains("lckv [command] [options]", root.Out);
        var generate = Run("generate", "--help");
        Assert.Contains("lckv generate [options]", generate.Out);
        foreach (var r in new[] { root, generate })
        {
            Assert.DoesNotContain("Lckv.Cli", r.Out);
            Assert.DoesNotContain("testhost", r.Out);
        }
        // generate's prompt is --prompt alone; -p is bench's prompt length (hidden on generate while it warns)
        Assert.Contains("--prompt <prompt>", generate.Out);
        Assert.DoesNotContain("-p,", generate.Out);
        Assert.Contains("-p, --n-prompt", Run("bench", "--help").Out);
        var perplexity = Run("perplexity", "--help").Out;
        Assert.Contains("-c, --context", perplexity);
        Assert.Contains("--limit-tokens", perplexity);
        Assert.DoesNotContain("--ctx", perplexity);
        Assert.DoesNotContain("--max-tokens", perplexity);
        AssertOneLineError(Run("bogus"), "'bogus'");
    }

    [SharedFact]
    public void OldSpellingsStillWorkWithAWarning()
    {
        string[] model = ["--model", Golden("llama-standard"), "--kv-dtype", "f32"];
        var now = Run(["generate", .. model, "--tokenizer", Tokenizer, "--prompt", "First Citizen", "-n", "4", "--temperature", "0"]);
        var old = Run(["generate", .. model, "--tokenizer", Tokenizer, "-p", "First Citizen", "-n", "4", "--temperature", "0"]);
        Assert.True(old.Code == 0, old.Err);
        Assert.Equal(now.Out, old.Out);
        Assert.DoesNotContain("warning", now.Err);
        Assert.Contains("warning: -p is deprecated on generate; use --prompt", old.Err);
        AssertOneLineError(Run(["generate", .. model, "--tokenizer", Tokenizer, "-p", "a", "--prompt", "b"]), "give --prompt only");

        using var dir = new TempDir();
        string ids = dir.WriteText("ids.txt", string.Join(' ', Enumerable.Range(0, 60).Select(i => (i * 37 + 1) % 4000)));
        var pplNow = Run(["perplexity", .. model, "--ids-file", ids, "--context", "16", "--limit-tokens", "40", "--json"]);
        var pplOld = Run(["perplexity", .. model, "--ids-file", ids, "--ctx", "16", "--max-tokens", "40", "--json"]);
        Assert.True(pplOld.Code == 0, pplOld.Err);
        Assert.DoesNotContain("warning", pplNow.Err);
        Assert.Contains("warning: --ctx is deprecated on perplexity; use --context", pplOld.Err);
        Assert.Contains("warning: --max-tokens is deprecated on perplexity; use --limit-tokens", pplOld.Err);
        using var a = JsonDocument.Parse(pplNow.Out);
        using var b = JsonDocument.Parse(pplOld.Out);
        Assert.InRange(a.RootElement.GetProperty("tokens").GetInt32(), 30, 39); // of the first 40 tokens, not 60
        Assert.Equal(a.RootElement.GetProperty("tokens").GetInt32(), b.RootElement.GetProperty("tokens").GetInt32());
        Assert.Equal(16, a.RootElement.GetProperty("context").GetInt32());
        Assert.Equal(a.RootElement.GetProperty("perplexity").GetDouble(), b.RootElement.GetProperty("perplexity").GetDouble());
        AssertOneLineError(Run(["perplexity", .. model, "--ids-file", ids, "--ctx", "16", "--context", "16"]), "give --context only");
    }

    [Fact]
    public void CountsAreInUnits()
    {
        Assert.Equal("10.9M", Names.Count(10_889_000));
        Assert.Equal("1.10B", Names.Count(1_100_048_384));
        Assert.Equal("27.8M", Names.Count(27_795_968));
        Assert.Equal("950", Names.Count(950));
        Assert.Equal("4.10K", Names.Count(4_096));
        Assert.Equal("f32", Names.DType(Lckv.Numerics.DType.F32));
        Assert.Equal("q8_0", Names.DType(Lckv.Numerics.DType.Q8_0));
    }

    [Fact]
    public void InfoSpeaksPlainly()
    {
        var small = Run("info", "--preset", "small");
        Assert.True(small.Code == 0, small.Err);
        Assert.Contains("(27.8M)", small.Out);
        Assert.DoesNotContain("x less than", small.Out);
        Assert.Contains("same as a standard layout", small.Out);
        Assert.Contains("dtype           f32", small.Out);
        var w2 = Run("info", "--preset", "tinyllama-1.1b", "--layout", "lckv-w2");
        Assert.Contains("7.33x smaller than a standard layout", w2.Out); // 3 KV layers of 22
        Assert.Matches(@"parameters      [\d,]+ \(\d\.\d\dB\)", w2.Out);
        Assert.Contains("dtype           bf16", w2.Out);

        // a config alone: its torch_dtype in the same names as the tensors' dtypes
        using var dir = new TempDir();
        string config = dir.WriteText("config.json", """
            {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 64, "torch_dtype": "bfloat16"}
            """);
        var cfg = Run("info", "--config", config);
        Assert.True(cfg.Code == 0, cfg.Err);
        Assert.Contains("dtype           bf16", cfg.Out);
        Assert.DoesNotContain("bfloat16", cfg.Out);
    }

    [SharedFact]
    public void InfoOnACheckpointNamesItsDTypeAsTheOptionsDo()
    {
        var r = Run("info", "--model", Golden("llama-standard"));
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("dtype           f32", r.Out);
        Assert.DoesNotContain("F32", r.Out);
    }

    [Fact]
    public void KvDTypeDefaultsToTheWeightsPrecision()
    {
        string Kv(params string[] extra)
        {
            var r = Run(["info", "--json", .. extra]);
            Assert.True(r.Code == 0, r.Err);
            using var doc = JsonDocument.Parse(r.Out);
            return doc.RootElement.GetProperty("kv_dtype").GetString()!;
        }
        Assert.Equal("f32", Kv("--preset", "small"));
        Assert.Equal("bf16", Kv("--preset", "small", "--dtype", "bf16"));
        Assert.Equal("bf16", Kv("--preset", "small", "--dtype", "f16"));
        Assert.Equal("bf16", Kv("--preset", "tinyllama-1.1b"));
        Assert.Equal("bf16", Kv("--preset", "small", "--weights", "q8_0"));
        Assert.Equal("f32", Kv("--preset", "tinyllama-1.1b", "--kv-dtype", "f32")); // an explicit dtype wins
        Assert.Equal("f32", Kv("--preset", "tinyllama-1.1b", "--weights", "f32"));
        Assert.Contains("(bf16; ", Run("info", "--preset", "tinyllama-1.1b").Out);
        // bench throughput likewise
        string Throughput(params string[] extra)
        {
            var r = Run(["bench", "throughput", "--preset", "small", "--layouts", "llama", "--prompt", "4", "--gen", "3", "--account-only", "-o", "json", .. extra]);
            Assert.True(r.Code == 0, r.Err);
            using var doc = JsonDocument.Parse(r.Out);
            return doc.RootElement.GetProperty("kv_dtype").GetString()!;
        }
        Assert.Equal("f32", Throughput());
        Assert.Equal("bf16", Throughput("--dtype", "bf16"));
        Assert.Equal("f32", Throughput("--dtype", "bf16", "--kv-dtype", "f32"));
    }

    [SharedFact]
    public void ABf16CheckpointRunsItsCacheInBf16UnlessAsked()
    {
        using var dir = new TempDir();
        string ids = dir.WriteText("ids.txt", string.Join(' ', Enumerable.Range(0, 48).Select(i => (i * 37 + 1) % 500)));
        double Ppl(params string[] extra)
        {
            var r = Run(["perplexity", "--model", Golden("llama-bf16-tied"), "--ids-file", ids, "--context", "48", "--json", .. extra]);
            Assert.True(r.Code == 0, r.Err);
            using var doc = JsonDocument.Parse(r.Out);
            return doc.RootElement.GetProperty("perplexity").GetDouble();
        }
        double byDefault = Ppl(), bf16 = Ppl("--kv-dtype", "bf16"), f32 = Ppl("--kv-dtype", "f32");
        Assert.Equal(bf16, byDefault);
        Assert.NotEqual(f32, byDefault);
    }

    [Fact]
    public void BatchedGenerationLabelsEachSequence()
    {
        var r = Run("generate", "--preset", "small", "--prompt-ids", "1,2;3,4,5;6", "-n", "2", "--temperature", "0", "--ignore-eos");
        Assert.True(r.Code == 0, r.Err);
        var lines = r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(3, lines.Length);
        for (int i = 0; i < 3; i++) Assert.Matches($@"^\[{i}\] \d+,\d+$", lines[i]);
        // one sequence keeps its bare line
        var one = Run("generate", "--preset", "small", "--prompt-ids", "1,2", "-n", "2", "--temperature", "0", "--ignore-eos");
        Assert.Matches(@"^\d+,\d+\n$", one.Out.ReplaceLineEndings("\n"));
    }

    [Fact]
    public void AThroughputBudgetBelowTheWeightsIsAnErrorBeforeAnyWork()
    {
        var r = Run("bench", "throughput", "--preset", "small", "--layouts", "llama,lckv-w2", "--budget", "1", "--prompt", "4", "--gen", "3");
        AssertOneLineError(r, "--budget 1.00 MiB is too small: the weights alone");
        Assert.Equal("", r.Out);
        Assert.DoesNotContain("vs -", r.Out);
        // above the weights but short of one sequence's KV and buffers
        var weights = Run("bench", "throughput", "--preset", "small", "--layouts", "llama", "--account-only", "--prompt", "4", "--gen", "3", "-o", "json");
        Assert.True(weights.Code == 0, weights.Err);
        using var doc = JsonDocument.Parse(weights.Out);
        long w = doc.RootElement.GetProperty("rows")[0].GetProperty("memory").GetProperty("weights").GetInt64();
        string mib = ((w + 1024) / 1048576.0).ToString("F4", System.Globalization.CultureInfo.InvariantCulture);
        AssertOneLineError(Run("bench", "throughput", "--preset", "small", "--layouts", "llama", "--budget", mib, "--prompt", "4", "--gen", "3"),
            "no layout fits one sequence");
    }

    [Fact]
    public void OneRepetitionHasNoSpreadAndACacheResidentModelNoRooflineShare()
    {
        Assert.Equal("12.3", BenchCommand.Rate(Stats.Of([12.34])));
        Assert.Equal("11.0 ± 1.4", BenchCommand.Rate(Stats.Of([10.0, 12.0])));
        BenchResult Result(string bound, double tps, double roof) => new(BenchKind.TextGeneration, 8, 1, 0, Stats.Of([tps]), roof, bound);
        long cache = 32L << 20;
        Assert.Equal("cache-resident", BenchCommand.Share(Result("memory", 50, 100), 1e6, cache)); // its weights stay in cache
        Assert.Equal("cache-resident", BenchCommand.Share(Result("memory", 150, 100), 1e9, null)); // past the memory roofline
        Assert.Equal("50%", BenchCommand.Share(Result("memory", 50, 100), 1e9, cache));
        Assert.Equal("50%", BenchCommand.Share(Result("compute", 50, 100), 1e6, cache));
        Assert.Equal(32L << 20, CpuCache.Parse("32768K"));
        Assert.Equal(2L << 20, CpuCache.Parse("2M"));
        Assert.Null(CpuCache.Parse("lots"));
    }

    [Fact]
    public void BenchWithOneRepetitionPrintsNoPlusMinus()
    {
        var r = Run("bench", "--preset", "small", "-p", "4", "-n", "0", "-b", "1", "-r", "1");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("| pp4 | 1 | 0 |", r.Out);
        Assert.DoesNotContain("±", r.Out);
        Assert.Contains("27.8M parameters, weights f32", r.Out);
    }
}
