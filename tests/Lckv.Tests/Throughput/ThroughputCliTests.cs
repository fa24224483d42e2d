using System.Text.Json;
using Lckv.Plotting;

namespace Lckv.Tests.Throughput;

/// <summary>lckv bench throughput end to end on the small preset with tiny lengths.</summary>
public sealed class ThroughputCliTests
{
    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Lckv.Cli.Cli.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    private static readonly string[] _tiny = ["bench", "throughput", "--preset", "small", "--layouts", "llama,lckv-w2,cla2", "--prompt", "4", "--gen", "3"];

    [Fact]
    public void PrintsTheTableAndWritesThePlot()
    {
        var dir = Directory.CreateTempSubdirectory("lckv-tp-");
        try
        {
            string png = Path.Combine(dir.FullName, "tp.png");
            var (code, stdout, stderr) = Run([.. _tiny, "--plot", png]);
            Assert.True(code == 0, stderr);
            Assert.Contains("| row | layer_types | KV | eviction | KV layers | KV bytes/token | max batch |", stdout);
            Assert.Contains("| llama | 0..7 | f32 | none | 8 | 16384 | 1 |", stdout);
            Assert.Contains("| lckv-w2 | 0_6x6_7 | f32 | none | 3 | 6144 |", stdout);
            Assert.Contains("Machine, measured in this run: FMA peak", stdout);
            Assert.Contains("1.00x", stdout);
            Assert.Equal(Png.Signature.ToArray(), File.ReadAllBytes(png)[..8]);
        }
        finally { dir.Delete(true); }
    }

    [Fact]
    public void JsonAtAFixedBatch()
    {
        var (code, stdout, stderr) = Run([.. _tiny, "--batch", "2", "--output", "json"]);
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var rows = doc.RootElement.GetProperty("rows").EnumerateArray().ToArray();
        Assert.Equal(3, rows.Length);
        foreach (var r in rows)
        {
            Assert.Equal(2, r.GetProperty("batch").GetInt32());
            Assert.Equal(6, r.GetProperty("generated_tokens").GetInt32());
            Assert.False(r.GetProperty("searched").GetBoolean());
        }
    }

    [Fact]
    public void RoundsReportMediansAndTheirRange()
    {
        var (code, stdout, stderr) = Run([.. _tiny, "--batch", "1", "--rounds", "3", "--output", "json"]);
        Assert.True(code == 0, stderr);
        Assert.Contains("llama (3/3)", stderr); // the rounds ran interleaved: the last round's llama run is announced
        using var doc = JsonDocument.Parse(stdout);
        foreach (var r in doc.RootElement.GetProperty("rows").EnumerateArray())
        {
            Assert.Equal(3, r.GetProperty("rounds").GetInt32());
            double total = r.GetProperty("total_tokens_per_second").GetDouble();
            double min = r.GetProperty("total_tokens_per_second_min").GetDouble(), max = r.GetProperty("total_tokens_per_second_max").GetDouble();
            Assert.True(min > 0 && min <= max, $"{min} {max}");
            Assert.Equal(3, r.GetProperty("generated_tokens").GetInt32()); // one run's tokens, not three
            Assert.True(total > 0);
        }
    }

    [Fact]
    public void BenchWithoutSubcommandStillParses()
    {
        var (code, _, stderr) = Run("bench", "--n-prompt", "x");
        Assert.NotEqual(0, code);
        Assert.Contains("--n-prompt", stderr);
    }

    [Theory]
    [InlineData("--layouts", "llama,mistral", "mistral")]
    [InlineData("--budget", "-5", "--budget")]
    [InlineData("--prompt", "0", "--prompt")]
    [InlineData("--gen", "5000", "context")]
    [InlineData("--kv-dtype", "int4", "int4")]
    [InlineData("--layouts", "llama/int8/lru:1:2", "lru")]
    [InlineData("--heavy", "4", "--heavy needs --evict h2o")]
    [InlineData("--output", "csv", "--output")]
    [InlineData("--plot", "x.gif", ".png")]
    [InlineData("--max-batch", "0", "--max-batch")]
    [InlineData("--batch", "0", "--batch")]
    [InlineData("--preset", "huge", "huge")]
    [InlineData("--prompt", "abc", "abc")]
    [InlineData("--rounds", "0", "--rounds")]
    [InlineData("--budget-kind", "gpu", "--budget-kind")]
    public void BadOptionsAreOneLine(string option, string value, string mustContain)
    {
        var args = new List<string> { "bench", "throughput" };
        foreach (var (o, v) in new[] { ("--preset", "small"), ("--layouts", "llama"), ("--prompt", "4"), ("--gen", "3") })
            if (o != option) args.AddRange([o, v]);
        args.AddRange([option, value]);
        var (code, _, stderr) = Run([.. args]);
        Assert.NotEqual(0, code);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, $"expected one line, got:\n{stderr}");
        Assert.StartsWith("error: ", lines[0]);
        Assert.Contains(mustContain, lines[0], StringComparison.OrdinalIgnoreCase);
    }
}
