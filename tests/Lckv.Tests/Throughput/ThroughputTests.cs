using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using Lckv.Cache;
using Lckv.Formats;
using Lckv.Generation;
using Lckv.Model;
using Lckv.Numerics;
using Lckv.Plotting;

namespace Lckv.Tests.Throughput;

/// <summary>The throughput experiment: its accounting matches what is allocated, the batch search is tight, the layouts
/// are the documented ones, the PNG is valid, and the CLI subcommand runs and fails in one line.</summary>
public sealed class ThroughputTests
{
    /// <summary>A tiny Llama shape: 6 layers, so every named layout but w=10 applies.</summary>
    private static ModelConfig Tiny(int layers = 6) => new()
    {
        HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = layers, NumAttentionHeads = 4, NumKeyValueHeads = 2,
        HeadDim = 8, VocabSize = 64, MaxPositionEmbeddings = 256, BosTokenId = 1, EosTokenIds = [2], TorchDtype = "float32",
    };

    private static ThroughputSettings Settings(long budget = 0, int prompt = 12, int gen = 5) => new()
    {
        Shape = Tiny(), ShapeName = "tiny", WeightDType = DType.F32, BudgetBytes = budget, PromptLength = prompt, GenLength = gen,
        KvDType = DType.F32, BlockSize = 4, MaxBatch = 64,
    };

    [Fact]
    public void MedianOfRunsTakesEachTimeOnItsOwn()
    {
        var bench = new ThroughputBench(Settings(budget: 1L << 30));
        var row = bench.Run("llama", batch: 2, accountOnly: true) with { GeneratedTokens = 10, PromptTokens = 24 };
        var runs = new[]
        {
            row with { PrefillSeconds = 1, DecodeSeconds = 9 },
            row with { PrefillSeconds = 3, DecodeSeconds = 4 },
            row with { PrefillSeconds = 2, DecodeSeconds = 5 },
        };
        var m = ThroughputRow.Median(runs);
        Assert.Equal(2, m.PrefillSeconds);
        Assert.Equal(5, m.DecodeSeconds);
        Assert.Equal(3, m.Rounds);
        Assert.Equal(1.0, m.TotalMin, 9); // 10 tokens in 10 s
        Assert.Equal(10 / 7.0, m.TotalMax, 9);
        Assert.Equal(6.5, ThroughputRow.Median(runs[..2]).DecodeSeconds); // an even count: the mean of the middle two
        Assert.Throws<ArgumentException>(() => ThroughputRow.Median([]));
    }

    [Fact]
    public void RowsNameTheirKvStorageAndEviction()
    {
        var v = ThroughputVariant.Parse("lckv-w2/int8/streaming:4:508", DType.F32, EvictionSettings.None);
        Assert.Equal(("lckv-w2", DType.KvInt8), (v.Layout, v.KvDType));
        Assert.Equal(new EvictionSettings(EvictionKind.Streaming, Sinks: 4, Recent: 508), v.Eviction);
        var d = ThroughputVariant.Parse("llama/h2o:8:8", DType.BF16, EvictionSettings.None);
        Assert.Equal((DType.BF16, EvictionKind.H2O, 8, 8), (d.KvDType, d.Eviction.Kind, d.Eviction.Heavy, d.Eviction.Recent));
        var plain = ThroughputVariant.Parse("yoco", DType.KvQ4, new EvictionSettings(EvictionKind.H2O, Heavy: 1, Recent: 1));
        Assert.Equal((DType.KvQ4, EvictionKind.H2O), (plain.KvDType, plain.Eviction.Kind));
        Assert.Equal(EvictionKind.None, ThroughputVariant.Parse("yoco/none", DType.F32, plain.Eviction).Eviction.Kind);
        foreach (var (spec, message) in new[]
        {
            ("llama/int4", "neither a KV dtype"), ("llama/int8/q4", "two KV dtypes"), ("llama/streaming:4", "two integers"),
            ("llama/h2o:4:0", "at least 1"), ("/int8", "names no layout"), ("llama/streaming:1:2/h2o:1:2", "two evictions"),
        })
            Assert.Contains(message, Assert.Throws<LckvException>(() => ThroughputVariant.Parse(spec, DType.F32, EvictionSettings.None)).Message);
        var e = Assert.Throws<LckvException>(() => new ThroughputBench(Settings()).Variant("llama/q4"));
        Assert.Contains("multiple of 32", e.Message);
    }

    [Fact]
    public void LayoutErrorsNameTheProblem()
    {
        Assert.Contains("unknown layout", Assert.Throws<LckvException>(() => ThroughputLayouts.LayerTypes("mistral", 6)).Message);
        Assert.Contains("more than 10 layers", Assert.Throws<LckvException>(() => ThroughputLayouts.LayerTypes("lckv-w10", 6)).Message);
        Assert.Throws<LckvException>(() => ThroughputLayouts.LayerTypes("0_9_9", 3));
        Assert.Equal("0_20x20_21", ThroughputLayouts.Abbreviate(ThroughputLayouts.LayerTypes("lckv-w2", 22)));
        Assert.Equal("0..4_16x12_17..21", ThroughputLayouts.Abbreviate(ThroughputLayouts.LayerTypes("lckv-w10", 22)));
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(7, 3)]
    [InlineData(512, 16)]
    public void ScratchBytesEqualsWhatTheRunnerAllocates(int rows, int sequences)
    {
        using var model = new LlamaModel(Tiny(), ModelWeights.Random(Tiny(), LayerMap.Identity(6), DType.F32, 1), "tiny");
        using var pool = new KvBlockPool(model.KvLayout(4, DType.F32), 1 << 16);
        var runner = new ForwardRunner(model, new KvCache(pool, model.Map.KvLayerCount, 64), rows, sequences);
        Assert.Equal(ForwardRunner.ScratchBytes(model.Config, rows, sequences), runner.AllocatedScratchBytes);
        Assert.True(runner.AllocatedScratchBytes > 9L * rows * 8 * sizeof(float));
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("lckv-w2")]
    [InlineData("cla2")]
    public void AccountedWeightsAndKvEqualTheAllocations(string layout)
    {
        var bench = new ThroughputBench(Settings(budget: long.MaxValue));
        var v = bench.Variant(layout);
        var config = bench.ConfigFor(layout);
        var map = LayerMap.Parse(config.LayerTypes, config.NumHiddenLayers);
        var account = bench.Account(config, map, 3, v);
        using var weights = ModelWeights.Random(config, map, DType.F32, 0);
        Assert.Equal(weights.Bytes, account.WeightBytes);
        using var pool = new KvBlockPool(new KvLayout(4, config.NumKeyValueHeads, config.HeadDim, DType.F32), account.KvBytes);
        Assert.Equal(account.KvBytes, pool.CapacityBytes);
        // the pool holds exactly three sequences of prompt + gen tokens
        var cache = new KvCache(pool, map.KvLayerCount, 17);
        for (int i = 0; i < 3; i++) Assert.True(cache.TryReserve(cache.CreateSequence(), 17));
        Assert.Equal(0, pool.FreeBlocks);
        Assert.Equal(ForwardRunner.ScratchBytes(config, bench.RunnerRows(map, 3), 3), account.ScratchBytes);
    }

    [Theory]
    [InlineData("llama", 1)]
    [InlineData("llama", 3)]
    [InlineData("lckv-w2", 2)]
    [InlineData("yoco", 5)]
    [InlineData("llama/int8", 2)]
    [InlineData("llama/streaming:2:6", 2)]
    [InlineData("lckv-w2/bf16/h2o:3:5", 2)]
    public void MaxBatchIsTheLargestThatFitsAndItRuns(string layout, int llamaBatch)
    {
        var probe = new ThroughputBench(Settings());
        long budget = probe.BudgetFor("llama", llamaBatch) + 100; // llama fits exactly llamaBatch
        var bench = new ThroughputBench(Settings(budget));
        var v = bench.Variant(layout);
        var config = bench.ConfigFor(v.Layout);
        var map = LayerMap.Parse(config.LayerTypes, config.NumHiddenLayers);
        int b = bench.MaxBatch(config, map, v);
        // an evicting store's capacity holds a whole prompt besides its budget, which these short sequences do not exceed
        Assert.True(v.Evicts ? b >= 1 : b >= llamaBatch, $"{layout}: batch {b}");
        Assert.True(bench.Account(config, map, b, v).TotalBytes <= budget);
        Assert.True(bench.Account(config, map, b + 1, v).TotalBytes > budget);
        if (layout == "llama") Assert.Equal(llamaBatch, b);

        var row = bench.Run(layout);
        Assert.Equal(b, row.Batch);
        Assert.True(row.FitsBudget);
        Assert.False(row.Capped);
        Assert.Equal(row.Fit.KvBytes, row.PoolBytes);
        Assert.True(row.Next.TotalBytes > budget);
        Assert.Equal(b * 5, row.GeneratedTokens);
        Assert.Equal(b * 12, row.PromptTokens);
        Assert.Equal(b * 4, row.DecodeTokens); // the first new token comes from the prefill logits
        Assert.True(row.TotalTokensPerSecond > 0);
    }

    [Fact]
    public void SharingFitsMoreSequencesThanLlama()
    {
        var probe = new ThroughputBench(Settings(prompt: 12, gen: 400));
        long one = probe.BudgetFor("llama", 1), two = probe.BudgetFor("llama", 2);
        var bench = new ThroughputBench(Settings(one + (two - one) / 2, prompt: 12, gen: 400)); // llama: 1.5 sequences
        int Max(string l) { var c = bench.ConfigFor(l); return bench.MaxBatch(c, LayerMap.Parse(c.LayerTypes, 6)); }
        Assert.Equal(1, Max("llama"));
        // 3 KV layers of 6: half the KV per sequence, so the 1.5 llama sequences hold 3 minus what the extra buffers take
        foreach (var layout in new[] { "lckv-w2", "cla2", "yoco" }) Assert.InRange(Max(layout), 2, 3);
    }

    [Fact]
    public void AKvOnlyBudgetGivesTheKvSizeRatio()
    {
        // llama's KV for one sequence as the budget: a layout with 2 KV layers of 6 fits floor(6 / 2) = 3, whatever
        // the weights it drops
        var settings = Settings(prompt: 12, gen: 400) with { BudgetKind = BudgetKind.KvOnly };
        long budget = new ThroughputBench(settings).BudgetFor("llama", 1);
        var bench = new ThroughputBench(settings with { BudgetBytes = budget });
        Assert.Equal(bench.Account(bench.ConfigFor("llama"), LayerMap.Parse(bench.ConfigFor("llama").LayerTypes, 6), 1).KvBytes, budget);
        int Max(string l) { var c = bench.ConfigFor(l); return bench.MaxBatch(c, LayerMap.Parse(c.LayerTypes, 6)); }
        Assert.Equal(1, Max("llama"));
        Assert.Equal(3, Max("0_5_5_5_5_5"));
        // the same bytes as a total budget do not even hold the weights
        var total = new ThroughputBench(settings with { BudgetKind = BudgetKind.Total, BudgetBytes = budget });
        var c2 = total.ConfigFor("0_5_5_5_5_5");
        Assert.Equal(0, total.MaxBatch(c2, LayerMap.Parse(c2.LayerTypes, 6)));
    }

    [Fact]
    public void NothingFitsAnEmptyBudget()
    {
        var row = new ThroughputBench(Settings(budget: 1000)).Run("llama");
        Assert.Equal(0, row.Batch);
        Assert.False(row.FitsBudget);
        Assert.Equal(0, row.GeneratedTokens);
    }

    [Fact]
    public void Crc32MatchesTheStandardCheckValue()
        => Assert.Equal(0xCBF43926u, Png.Crc32(Encoding.ASCII.GetBytes("123456789")));

    [Fact]
    public void PngIsValid()
    {
        int w = 13, h = 7;
        var rgb = new byte[w * h * 3];
        for (int i = 0; i < rgb.Length; i++) rgb[i] = (byte)(i * 7);
        var png = Png.Encode(w, h, rgb);
        Assert.Equal(Png.Signature.ToArray(), png[..8]);
        var chunks = new List<(string Type, byte[] Data)>();
        for (int at = 8; at < png.Length;)
        {
            int length = BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(at));
            string type = Encoding.ASCII.GetString(png, at + 4, 4);
            var data = png.AsSpan(at + 8, length).ToArray();
            uint crc = BinaryPrimitives.ReadUInt32BigEndian(png.AsSpan(at + 8 + length));
            Assert.Equal(Png.Crc32(png.AsSpan(at + 4, 4 + length)), crc);
            chunks.Add((type, data));
            at += 12 + length;
        }
        Assert.Equal(["IHDR", "IDAT", "IEND"], chunks.Select(c => c.Type));
        var ihdr = chunks[0].Data;
        Assert.Equal(w, BinaryPrimitives.ReadInt32BigEndian(ihdr));
        Assert.Equal(h, BinaryPrimitives.ReadInt32BigEndian(ihdr.AsSpan(4)));
        Assert.Equal(new byte[] { 8, 2, 0, 0, 0 }, ihdr[8..]);
        Assert.Empty(chunks[2].Data);
        using var z = new ZLibStream(new MemoryStream(chunks[1].Data), CompressionMode.Decompress);
        using var raw = new MemoryStream();
        z.CopyTo(raw);
        var bytes = raw.ToArray();
        Assert.Equal(h * (1 + w * 3), bytes.Length);
        for (int y = 0; y < h; y++)
        {
            Assert.Equal(0, bytes[y * (1 + w * 3)]);
            Assert.Equal(rgb.AsSpan(y * w * 3, w * 3).ToArray(), bytes.AsSpan(y * (1 + w * 3) + 1, w * 3).ToArray());
        }
    }

    [Fact]
    public void ALongCategoryBreaksIntoTwoLinesInsteadOfShrinking()
    {
        string[] names = ["llama", "lckv-w2", "lckv-w10", "cla2", "yoco"];
        var chart = BarChart.Render("t", "s", names, [new BarPanel("x", [1, 2, 3, 4, 5])]);
        // one 520 x 560 panel: plot area from x 70 to 500, axis at y 500, labels from y 512; a second line at y 530
        int slot = (500 - 70) / names.Length;
        bool Ink(int i, int y0, int y1)
        {
            for (int y = y0; y < y1; y++)
                for (int x = 70 + slot * i + 2; x < 70 + slot * (i + 1) - 2; x++)
                    if (chart.Rgb[(y * chart.Width + x) * 3] < 128) return true;
            return false;
        }
        Assert.True(Ink(2, 530, 544), "lckv-w10 has a second line");
        Assert.True(Ink(2, 512, 526), "and a first one at full size");
        Assert.False(Ink(0, 530, 544), "llama fits on one line");
    }

    [Fact]
    public void ChartRendersTextAndBarsAndSavesAtomically()
    {
        var chart = BarChart.Render("t", "s", ["a", "b"], [new BarPanel("x", [1, 2]), new BarPanel("y", [0, double.NaN])]);
        Assert.Contains(chart.Rgb, v => v < 128); // something was drawn on white
        var dir = Directory.CreateTempSubdirectory("lckv-png-");
        try
        {
            var path = Path.Combine(dir.FullName, "c.png");
            Png.Save(path, chart.Width, chart.Height, chart.Rgb);
            Assert.Equal(Png.Signature.ToArray(), File.ReadAllBytes(path)[..8]);
            Assert.Single(Directory.GetFiles(dir.FullName)); // no temporary file left behind
        }
        finally { dir.Delete(true); }
    }
}
