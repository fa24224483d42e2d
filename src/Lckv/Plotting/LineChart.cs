using System.Globalization;

namespace Lckv.Plotting;

/// <summary>One line of a line chart: a legend name and its points in data coordinates (drawn in the order given).</summary>
public sealed record LineSeries(string Name, IReadOnlyList<(double X, double Y)> Points);

/// <summary>
/// Lines over shared axes: nice ticks and gridlines on both axes, a legend in the top-right corner. The y range is
/// the data's unless yMin / yMax fix it (points outside are clipped to the plot area).
/// </summary>
public static class LineChart
{
    private static readonly uint[] _palette = [0x4C72B0, 0xDD8452, 0x55A868, 0xC44E52, 0x8172B3, 0x937860, 0xDA8BC3, 0x8C8C8C];
    private const uint Ink = 0x202020, Grid = 0xDDDDDD, Muted = 0x606060;

    public static Canvas Render(string title, string subtitle, string xLabel, string yLabel, IReadOnlyList<LineSeries> series,
        double? yMin = null, double? yMax = null, int width = 1100, int height = 700, string xFormat = "0.##", string yFormat = "0.##")
    {
        if (series.Count == 0) throw new ArgumentException("a line chart needs at least one series");
        var finite = series.SelectMany(s => s.Points).Where(p => double.IsFinite(p.X) && double.IsFinite(p.Y)).ToList();
        if (finite.Count == 0) throw new ArgumentException("a line chart needs at least one finite point");
        if (yMin is double a && yMax is double b && !(a < b)) throw new ArgumentException($"y range [{a}, {b}] is empty");
        double x0 = finite.Min(p => p.X), x1 = finite.Max(p => p.X);
        double y0 = yMin ?? finite.Min(p => p.Y), y1 = yMax ?? finite.Max(p => p.Y);
        if (x1 <= x0) x1 = x0 + 1;
        if (y1 <= y0) { y0 -= 0.5; y1 += 0.5; }
        var (xLo, xHi, xStep) = Axis(x0, x1, 8, snapMin: true);
        var (yLo, yHi, yStep) = Axis(y0, y1, 6, snapMin: true);
        if (yMin is double fixedLo) yLo = fixedLo;
        if (yMax is double fixedHi) yHi = fixedHi;

        var c = new Canvas(width, height);
        c.DrawTextCentered(width / 2, 14, title, 3, Ink);
        c.DrawTextCentered(width / 2, 44, subtitle, 2, Muted);
        int left = 90, right = width - 30, top = 80, bottom = height - 80;
        int X(double v) => left + (int)Math.Round((right - left) * (v - xLo) / (xHi - xLo));
        // clamped to a band around the plot so that far-off points cannot make a segment arbitrarily long
        int Y(double v) => bottom - (int)Math.Round((bottom - top) * Math.Clamp((v - yLo) / (yHi - yLo), -1.0, 2.0));

        for (double v = FirstTick(yLo, yStep); v <= yHi + yStep * 1e-6; v += yStep)
        {
            int y = Y(v);
            c.FillRect(left, y, right - left, 1, Grid);
            string label = Tick(v, yStep).ToString(yFormat, CultureInfo.InvariantCulture);
            c.DrawText(left - 8 - BitmapFont.MeasureWidth(label, 2), y - 7, label, 2, Muted);
        }
        for (double v = FirstTick(xLo, xStep); v <= xHi + xStep * 1e-6; v += xStep)
        {
            int x = X(v);
            c.FillRect(x, top, 1, bottom - top, Grid);
            c.DrawTextCentered(x, bottom + 10, Tick(v, xStep).ToString(xFormat, CultureInfo.InvariantCulture), 2, Muted);
        }
        c.FillRect(left, top, 2, bottom - top + 1, Ink);
        c.FillRect(left, bottom, right - left, 2, Ink);
        c.DrawTextCentered((left + right) / 2, bottom + 40, xLabel, 2, Ink);
        c.DrawText(left - 70, top - 26, yLabel, 2, Ink);

        for (int i = 0; i < series.Count; i++)
        {
            uint color = _palette[i % _palette.Length];
            (int X, int Y)? prev = null;
            foreach (var (px, py) in series[i].Points)
            {
                if (!double.IsFinite(px) || !double.IsFinite(py)) { prev = null; continue; }
                var p = (X(px), Y(py));
                if (prev is { } q) Line(c, q.X, q.Y, p.Item1, p.Item2, color, left, top, right, bottom);
                else Dot(c, p.Item1, p.Item2, color, left, top, right, bottom);
                prev = p;
            }
        }

        int legendWidth = series.Max(s => BitmapFont.MeasureWidth(s.Name, 2)) + 50;
        int lx = right - legendWidth - 10, ly = top + 10;
        c.FillRect(lx - 6, ly - 6, legendWidth + 12, series.Count * 24 + 8, 0xFFFFFF);
        for (int i = 0; i < series.Count; i++)
        {
            c.FillRect(lx, ly + i * 24 + 5, 30, 4, _palette[i % _palette.Length]);
            c.DrawText(lx + 40, ly + i * 24, series[i].Name, 2, Ink);
        }
        return c;
    }

    /// <summary>A "nice" axis (steps of 1, 2 or 5 times a power of ten) covering [lo, hi] with about n intervals.</summary>
    private static (double Lo, double Hi, double Step) Axis(double lo, double hi, int n, bool snapMin)
    {
        double step = NiceStep((hi - lo) / n);
        double a = snapMin ? Math.Floor(lo / step) * step : lo;
        double b = Math.Ceiling(hi / step) * step;
        return (a, b, step);
    }

    private static double FirstTick(double lo, double step) => Math.Ceiling(lo / step - 1e-9) * step;

    /// <summary>A tick value with accumulated rounding error near zero removed (so it never prints as "-0").</summary>
    private static double Tick(double v, double step) => Math.Abs(v) < step * 1e-6 ? 0 : v;

    private static double NiceStep(double raw)
    {
        if (!(raw > 0)) return 1;
        double p = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        foreach (double m in new[] { 1.0, 2.0, 5.0, 10.0 })
            if (m * p >= raw) return m * p;
        return 10 * p;
    }

    private static void Dot(Canvas c, int x, int y, uint color, int left, int top, int right, int bottom)
    {
        if (x < left || x > right || y < top || y > bottom) return;
        c.FillRect(x - 1, y - 1, 3, 3, color);
    }

    /// <summary>A 2-pixel-thick segment (Bresenham), clipped pixel by pixel to the plot area.</summary>
    private static void Line(Canvas c, int xa, int ya, int xb, int yb, uint color, int left, int top, int right, int bottom)
    {
        int dx = Math.Abs(xb - xa), dy = -Math.Abs(yb - ya);
        int sx = xa < xb ? 1 : -1, sy = ya < yb ? 1 : -1;
        int err = dx + dy;
        int x = xa, y = ya;
        while (true)
        {
            if (x >= left && x <= right && y >= top && y <= bottom) c.FillRect(x, y, 2, 2, color);
            if (x == xb && y == yb) break;
            int e2 = 2 * err;
            if (e2 >= dy) { err += dy; x += sx; }
            if (e2 <= dx) { err += dx; y += sy; }
        }
    }
}
