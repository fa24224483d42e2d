using System.Buffers.Binary;
using System.Globalization;
using Lckv.Plotting;

namespace Lckv.Tests.Plotting;

/// <summary>LineChart and 'lckv plot loss': a valid PNG from training logs, one-line errors on bad input.</summary>
public sealed class LossPlotTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("lckv-plot-");

    public void Dispose() => _dir.Delete(true);

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Lckv.Cli.Cli.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    private string WriteLog(string run, int steps, double start)
    {
        var folder = Directory.CreateDirectory(Path.Combine(_dir.FullName, run));
        string path = Path.Combine(folder.FullName, "log.jsonl");
        using var w = new StreamWriter(path);
        w.WriteLine("""{"event":"start","time":"2025-01-01T00:00:00Z","arch":"decoder","options":{"batch":2}}""");
        for (int s = 1; s <= steps; s++)
        {
            double loss = start * Math.Exp(-s / 30.0) + 3 + 0.1 * Math.Sin(s);
            w.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $$"""{"event":"step","time":"2025-01-01T00:00:00Z","step":{{s}},"loss":{{loss}},"lr":0.001,"grad_norm":1.0,"tokens":{{s * 1024}},"tokens_per_second":100.0}"""));
            if (s % 50 == 0) w.WriteLine($$"""{"event":"eval","time":"2025-01-01T00:00:00Z","step":{{s}},"val_loss":4.0,"val_perplexity":54.6,"val_tokens":100}""");
        }
        return path;
    }

    private static void AssertValidPng(byte[] png, out int width, out int height)
    {
        Assert.Equal(Png.Signature.ToArray(), png[..8]);
        int at = 8;
        var types = new List<string>();
        width = height = 0;
        while (at < png.Length)
        {
            int length = BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(at));
            string type = System.Text.Encoding.ASCII.GetString(png, at + 4, 4);
            uint crc = BinaryPrimitives.ReadUInt32BigEndian(png.AsSpan(at + 8 + length));
            Assert.Equal(Png.Crc32(png.AsSpan(at + 4, 4 + length)), crc);
            if (type == "IHDR")
            {
                width = BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(at + 8));
                height = BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(at + 12));
            }
            types.Add(type);
            at += 12 + length;
        }
        Assert.Equal(["IHDR", "IDAT", "IEND"], types);
    }

    [Fact]
    public void PlotsTwoLogsAsAValidPng()
    {
        string a = WriteLog("llama", 200, 5), b = WriteLog("lckv", 120, 6);
        string png = Path.Combine(_dir.FullName, "loss.png");
        var (code, stdout, stderr) = Run("plot", "loss", "--log", a + ":llama", "--log", b, "--out", png, "--smooth", "10", "--y-max", "8");
        Assert.True(code == 0, stderr);
        Assert.Contains("2 line(s), 320 points", stdout);
        AssertValidPng(File.ReadAllBytes(png), out int w, out int h);
        Assert.True(w > 0 && h > 0);
        Assert.Empty(Directory.GetFiles(_dir.FullName, "*.tmp")); // written atomically, nothing left over
    }

    [Fact]
    public void LinesAreDrawnInTheirColours()
    {
        var chart = LineChart.Render("t", "s", "x", "y",
            [new LineSeries("a", [(0, 0), (1, 1)]), new LineSeries("b", [(0, 1), (1, 0)])], width: 400, height: 300);
        var colours = new HashSet<int>();
        for (int i = 0; i < chart.Rgb.Length; i += 3) colours.Add(chart.Rgb[i] << 16 | chart.Rgb[i + 1] << 8 | chart.Rgb[i + 2]);
        Assert.Contains(0x4C72B0, colours);
        Assert.Contains(0xDD8452, colours);
    }

    [Fact]
    public void ResumedStepsKeepTheLaterRecord()
    {
        string path = WriteLog("r", 3, 5);
        File.AppendAllText(path, """{"event":"step","time":"x","step":2,"loss":9.5,"tokens":2048}""" + "\n");
        var points = Lckv.Cli.PlotCommand.ReadLoss(path);
        Assert.Equal(3, points.Count);
        Assert.Equal(9.5, points[1].Y);
        Assert.Equal(2048 / 1e6, points[1].X);
    }

    [Fact]
    public void SmoothingIsATrailingMean()
    {
        var s = Lckv.Cli.PlotCommand.Smooth([(1, 1), (2, 3), (3, 5), (4, 7)], 2);
        Assert.Equal([1.0, 2.0, 4.0, 6.0], s.Select(p => p.Y));
    }

    [Theory]
    [InlineData("missing")]
    [InlineData("notjson")]
    [InlineData("nosteps")]
    [InlineData("badsmooth")]
    [InlineData("badrange")]
    [InlineData("nofolder")]
    public void BadInputIsAOneLineError(string kind)
    {
        string good = WriteLog("good", 10, 5);
        string png = Path.Combine(_dir.FullName, "out.png");
        string bad = Path.Combine(_dir.FullName, kind + ".jsonl");
        string[] args = kind switch
        {
            "missing" => ["plot", "loss", "--log", Path.Combine(_dir.FullName, "nope.jsonl"), "--out", png],
            "notjson" => Write(bad, "{\"event\":\"step\"\nnot json\n", png),
            "nosteps" => Write(bad, """{"event":"start","time":"x"}""" + "\n", png),
            "badsmooth" => ["plot", "loss", "--log", good, "--out", png, "--smooth", "0"],
            "badrange" => ["plot", "loss", "--log", good, "--out", png, "--y-min", "5", "--y-max", "4"],
            _ => ["plot", "loss", "--log", good, "--out", Path.Combine(_dir.FullName, "no", "such", "x.png")],
        };
        var (code, _, stderr) = Run(args);
        Assert.Equal(1, code);
        Assert.StartsWith("error: ", stderr);
        Assert.Single(stderr.TrimEnd('\n').Split('\n'));
        Assert.False(File.Exists(png));
    }

    private static string[] Write(string path, string text, string png)
    {
        File.WriteAllText(path, text);
        return ["plot", "loss", "--log", path, "--out", png];
    }

    [Fact]
    public void MissingLogOptionIsAUsageError()
    {
        var (code, _, stderr) = Run("plot", "loss", "--out", "x.png");
        Assert.Equal(2, code);
        Assert.Contains("--log", stderr);
    }

    [Fact]
    public void LinesFromACsvFileMakeAPngAndBadRowsAreOneLineErrors()
    {
        string csv = Path.Combine(_dir.FullName, "s.csv"), png = Path.Combine(_dir.FullName, "s.png");
        File.WriteAllText(csv, "series,x,y\nfull,0,10\nfull,1,9.5\nsinks 4,0,11\nsinks 4,1,10.25\n");
        var (code, stdout, stderr) = Run("plot", "lines", "--csv", csv, "--out", png, "--title", "t", "--x-label", "segment", "--y-label", "ppl");
        Assert.True(code == 0, stderr);
        Assert.Contains("2 line(s), 4 points", stdout);
        Assert.Equal(Png.Signature.ToArray(), File.ReadAllBytes(png)[..8]);
        File.WriteAllText(csv, "series,x,y\nfull,0,abc\n");
        Lckv.Tests.Cli.CliTests.AssertOneLineError(Run("plot", "lines", "--csv", csv, "--out", png), "s.csv:2");
        File.WriteAllText(csv, "a,b\n");
        Lckv.Tests.Cli.CliTests.AssertOneLineError(Run("plot", "lines", "--csv", csv, "--out", png), "header");
    }
}
