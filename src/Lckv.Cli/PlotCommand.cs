using System.CommandLine;
using System.Text.Json;
using Lckv.Plotting;

namespace Lckv.Cli;

/// <summary>lckv plot loss: training loss against tokens seen, one line per 'lckv train' log (log.jsonl), as a PNG.</summary>
public static class PlotCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var logs = new Option<string[]>("--log")
        {
            Description = "a training log (log.jsonl) as PATH or PATH:LABEL (default label: the log's folder name); repeat for more lines",
            Required = true,
            AllowMultipleArgumentsPerToken = false,
        };
        var output = new Option<string>("--out", "-o") { Description = "PNG file to write (atomically)", Required = true };
        var smooth = new Option<int>("--smooth") { Description = "moving average over this many steps (1 = raw)", DefaultValueFactory = _ => 1 };
        var yMin = new Option<double?>("--y-min") { Description = "bottom of the loss axis (default: the data's minimum)" };
        var yMax = new Option<double?>("--y-max") { Description = "top of the loss axis (default: the data's maximum)" };
        var title = new Option<string>("--title") { Description = "chart title", DefaultValueFactory = _ => "Training loss" };
        var subtitle = new Option<string?>("--subtitle") { Description = "line under the title (default: the smoothing)" };
        var loss = new Command("loss", "plot training loss vs tokens from one or more 'lckv train' logs");
        foreach (var o in new Option[] { logs, output, smooth, yMin, yMax, title, subtitle }) loss.Options.Add(o);
        loss.SetAction(p =>
        {
            int window = p.GetValue(smooth);
            if (window < 1) throw new LckvException($"--smooth must be at least 1, got {window}");
            double? lo = p.GetValue(yMin), hi = p.GetValue(yMax);
            if (lo is double a && hi is double b && !(a < b)) throw new LckvException($"--y-min {a} must be below --y-max {b}");
            var series = new List<LineSeries>();
            foreach (string spec in p.GetValue(logs)!)
            {
                var (path, label) = ParseSpec(spec);
                var points = ReadLoss(path);
                series.Add(new LineSeries(label, Smooth(points, window)));
            }
            string outPath = p.GetValue(output)!;
            string? dir = Path.GetDirectoryName(Path.GetFullPath(outPath));
            if (dir is not null && !Directory.Exists(dir)) throw new LckvException($"{outPath}: folder '{dir}' does not exist");
            string sub = p.GetValue(subtitle) ?? (window == 1 ? "raw per-step loss" : $"moving average over {window} steps");
            var chart = LineChart.Render(p.GetValue(title)!, sub, "tokens (millions)", "loss", series, lo, hi);
            Png.Save(outPath, chart.Width, chart.Height, chart.Rgb);
            stdout.WriteLine($"wrote {outPath} ({series.Count} line(s), {series.Sum(s => s.Points.Count)} points)");
            return 0;
        });
        var cmd = new Command("plot", "draw charts from run outputs");
        cmd.Subcommands.Add(loss);
        cmd.Subcommands.Add(Lines(stdout));
        return cmd;
    }

    /// <summary>lckv plot lines: one line per series of a CSV file with the header series,x,y.</summary>
    private static Command Lines(TextWriter stdout)
    {
        var csv = new Option<string>("--csv") { Description = "CSV file with the header series,x,y (one row per point, rows of a series in x order)", Required = true };
        var output = new Option<string>("--out", "-o") { Description = "PNG file to write (atomically)", Required = true };
        var title = new Option<string>("--title") { Description = "chart title", DefaultValueFactory = _ => "" };
        var subtitle = new Option<string>("--subtitle") { Description = "line under the title", DefaultValueFactory = _ => "" };
        var xLabel = new Option<string>("--x-label") { Description = "x axis label", DefaultValueFactory = _ => "x" };
        var yLabel = new Option<string>("--y-label") { Description = "y axis label", DefaultValueFactory = _ => "y" };
        var yMin = new Option<double?>("--y-min") { Description = "bottom of the y axis (default: the data's minimum)" };
        var yMax = new Option<double?>("--y-max") { Description = "top of the y axis (default: the data's maximum)" };
        var lines = new Command("lines", "plot the series of a CSV file (series,x,y) as lines");
        foreach (var o in new Option[] { csv, output, title, subtitle, xLabel, yLabel, yMin, yMax }) lines.Options.Add(o);
        lines.SetAction(p =>
        {
            double? lo = p.GetValue(yMin), hi = p.GetValue(yMax);
            if (lo is double a && hi is double b && !(a < b)) throw new LckvException($"--y-min {a} must be below --y-max {b}");
            string path = p.GetValue(csv)!, outPath = p.GetValue(output)!;
            if (!File.Exists(path)) throw new LckvException($"CSV file '{path}' does not exist");
            string? dir = Path.GetDirectoryName(Path.GetFullPath(outPath));
            if (dir is not null && !Directory.Exists(dir)) throw new LckvException($"{outPath}: folder '{dir}' does not exist");
            var series = ReadSeries(path);
            var chart = LineChart.Render(p.GetValue(title)!, p.GetValue(subtitle)!, p.GetValue(xLabel)!, p.GetValue(yLabel)!, series, lo, hi);
            Png.Save(outPath, chart.Width, chart.Height, chart.Rgb);
            stdout.WriteLine($"wrote {outPath} ({series.Count} line(s), {series.Sum(x => x.Points.Count)} points)");
            return 0;
        });
        return lines;
    }

    /// <summary>The series of a series,x,y CSV file, in the order they first appear.</summary>
    internal static List<LineSeries> ReadSeries(string path)
    {
        var order = new List<string>();
        var points = new Dictionary<string, List<(double X, double Y)>>();
        int lineNo = 0;
        foreach (string raw in File.ReadLines(path))
        {
            lineNo++;
            string line = raw.Trim();
            if (line.Length == 0) continue;
            if (lineNo == 1)
            {
                if (line.Replace(" ", "") != "series,x,y") throw new LckvException($"{path}: the first line must be the header series,x,y");
                continue;
            }
            var f = line.Split(',');
            if (f.Length != 3 || !double.TryParse(f[1], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double x)
                || !double.TryParse(f[2], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double y)
                || !double.IsFinite(x) || !double.IsFinite(y))
                throw new LckvException($"{path}:{lineNo}: expected series,x,y with two finite numbers");
            string name = f[0].Trim();
            if (!points.TryGetValue(name, out var list))
            {
                points[name] = list = [];
                order.Add(name);
            }
            list.Add((x, y));
        }
        if (order.Count == 0) throw new LckvException($"{path}: no points");
        return [.. order.Select(n => new LineSeries(n, points[n]))];
    }

    /// <summary>PATH or PATH:LABEL; the label defaults to the name of the log's folder.</summary>
    internal static (string Path, string Label) ParseSpec(string spec)
    {
        if (string.IsNullOrWhiteSpace(spec)) throw new LckvException("--log needs a path (PATH or PATH:LABEL)");
        string path = spec, label = "";
        int colon = spec.LastIndexOf(':');
        if (colon >= 0 && !File.Exists(spec))
        {
            path = spec[..colon];
            label = spec[(colon + 1)..];
            if (path.Length == 0) throw new LckvException($"--log '{spec}': the path before ':' is empty");
        }
        if (!File.Exists(path)) throw new LckvException($"log file '{path}' does not exist");
        if (label.Length == 0)
            label = Path.GetFileName(Path.GetDirectoryName(Path.GetFullPath(path))) ?? Path.GetFileNameWithoutExtension(path);
        return (path, label);
    }

    /// <summary>(tokens in millions, loss) of every "step" record; a step logged twice (a resumed run) keeps the later line.</summary>
    internal static List<(double X, double Y)> ReadLoss(string path)
    {
        var byStep = new SortedDictionary<long, (double, double)>();
        int lineNo = 0;
        foreach (string line in File.ReadLines(path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            try
            {
                using var doc = JsonDocument.Parse(line);
                var root = doc.RootElement;
                if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("event", out var ev) || ev.ValueKind != JsonValueKind.String)
                    throw new LckvException($"{path}:{lineNo}: not a training log record (no \"event\")");
                if (ev.GetString() != "step") continue;
                if (!root.TryGetProperty("step", out var step) || !root.TryGetProperty("loss", out var loss) || !root.TryGetProperty("tokens", out var tokens))
                    throw new LckvException($"{path}:{lineNo}: step record without step, loss and tokens");
                byStep[step.GetInt64()] = (tokens.GetDouble() / 1e6, loss.GetDouble());
            }
            catch (JsonException e)
            {
                throw new LckvException($"{path}:{lineNo}: not JSON ({Lckv.Formats.Printable.Escape(e.Message, 120)})", e);
            }
            catch (Exception e) when (e is FormatException or InvalidOperationException)
            {
                throw new LckvException($"{path}:{lineNo}: bad step record ({e.Message})", e);
            }
        }
        if (byStep.Count == 0) throw new LckvException($"{path}: no step records (is it an 'lckv train' log.jsonl?)");
        return [.. byStep.Values];
    }

    /// <summary>Trailing moving average over window points (fewer at the start).</summary>
    internal static List<(double X, double Y)> Smooth(IReadOnlyList<(double X, double Y)> points, int window)
    {
        if (window <= 1) return [.. points];
        var result = new List<(double, double)>(points.Count);
        double sum = 0;
        for (int i = 0; i < points.Count; i++)
        {
            sum += points[i].Y;
            if (i >= window) sum -= points[i - window].Y;
            result.Add((points[i].X, sum / Math.Min(i + 1, window)));
        }
        return result;
    }
}
