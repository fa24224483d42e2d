using System.Globalization;

namespace Lckv.Plotting;

/// <summary>An RGB raster with filled rectangles and 5x7 text.</summary>
public sealed class Canvas
{
    public int Width { get; }
    public int Height { get; }
    /// <summary>Height rows of Width * 3 bytes.</summary>
    public byte[] Rgb { get; }

    public Canvas(int width, int height, uint background = 0xFFFFFF)
    {
        if (width <= 0 || height <= 0) throw new ArgumentException($"canvas size must be positive, got {width}x{height}");
        Width = width;
        Height = height;
        Rgb = new byte[width * height * 3];
        FillRect(0, 0, width, height, background);
    }

    public void FillRect(int x, int y, int w, int h, uint color)
    {
        int x0 = Math.Max(0, x), y0 = Math.Max(0, y), x1 = Math.Min(Width, x + w), y1 = Math.Min(Height, y + h);
        byte r = (byte)(color >> 16), g = (byte)(color >> 8), b = (byte)color;
        for (int yy = y0; yy < y1; yy++)
            for (int xx = x0; xx < x1; xx++)
            {
                int o = (yy * Width + xx) * 3;
                Rgb[o] = r; Rgb[o + 1] = g; Rgb[o + 2] = b;
            }
    }

    /// <summary>Draws text with its top-left corner at (x, y), each font pixel a scale x scale square.</summary>
    public void DrawText(int x, int y, string text, int scale, uint color)
    {
        for (int i = 0; i < text.Length; i++)
        {
            var glyph = BitmapFont.Glyph(text[i]);
            int gx = x + i * BitmapFont.Advance * scale;
            for (int row = 0; row < BitmapFont.Height; row++)
                for (int col = 0; col < BitmapFont.Width; col++)
                    if ((glyph[row] >> (BitmapFont.Width - 1 - col) & 1) != 0)
                        FillRect(gx + col * scale, y + row * scale, scale, scale, color);
        }
    }

    /// <summary>Draws text centred horizontally on cx.</summary>
    public void DrawTextCentered(int cx, int y, string text, int scale, uint color)
        => DrawText(cx - BitmapFont.MeasureWidth(text, scale) / 2, y, text, scale, color);
}

/// <summary>One panel of a bar chart: a title and one value per category.</summary>
public sealed record BarPanel(string Title, IReadOnlyList<double> Values, string ValueFormat = "0.#");

/// <summary>Side-by-side bar panels over the same categories, each with its own axis, value labels and gridlines.</summary>
public static class BarChart
{
    private static readonly uint[] _palette = [0x4C72B0, 0xDD8452, 0x55A868, 0xC44E52, 0x8172B3, 0x937860, 0xDA8BC3, 0x8C8C8C];
    private const uint Ink = 0x202020, Grid = 0xDDDDDD, Muted = 0x606060;

    public static Canvas Render(string title, string subtitle, IReadOnlyList<string> categories, IReadOnlyList<BarPanel> panels,
        int panelWidth = 520, int height = 560)
    {
        if (panels.Count == 0 || categories.Count == 0) throw new ArgumentException("a chart needs at least one panel and one category");
        foreach (var p in panels)
            if (p.Values.Count != categories.Count) throw new ArgumentException($"panel '{p.Title}' has {p.Values.Count} values for {categories.Count} categories");
        var canvas = new Canvas(panelWidth * panels.Count, height);
        canvas.DrawTextCentered(canvas.Width / 2, 14, title, 3, Ink);
        canvas.DrawTextCentered(canvas.Width / 2, 44, subtitle, 2, Muted);
        for (int i = 0; i < panels.Count; i++) DrawPanel(canvas, i * panelWidth, 70, panelWidth, height - 70, categories, panels[i]);
        return canvas;
    }

    private static void DrawPanel(Canvas c, int x0, int y0, int w, int h, IReadOnlyList<string> categories, BarPanel panel)
    {
        c.DrawTextCentered(x0 + w / 2, y0 + 4, panel.Title, 2, Ink);
        int left = x0 + 70, right = x0 + w - 20, top = y0 + 50, bottom = y0 + h - 60;
        double max = panel.Values.Where(double.IsFinite).DefaultIfEmpty(0).Max();
        double step = NiceStep(max > 0 ? max / 4 : 1);
        double axisMax = Math.Max(step, Math.Ceiling(max / step) * step);
        int Y(double v) => bottom - (int)Math.Round((bottom - top) * v / axisMax);
        for (double v = 0; v <= axisMax + step / 2; v += step)
        {
            int y = Y(v);
            c.FillRect(left, y, right - left, 1, Grid);
            string label = v.ToString(step < 1 ? "0.##" : "0", CultureInfo.InvariantCulture);
            c.DrawText(left - 8 - BitmapFont.MeasureWidth(label, 2), y - 7, label, 2, Muted);
        }
        c.FillRect(left, top, 2, bottom - top + 1, Ink);
        c.FillRect(left, bottom, right - left, 2, Ink);
        int n = categories.Count;
        int slot = (right - left) / n;
        int barWidth = Math.Max(4, slot * 3 / 5);
        for (int i = 0; i < n; i++)
        {
            int cx = left + slot * i + slot / 2;
            double v = panel.Values[i];
            if (double.IsFinite(v) && v > 0)
            {
                int y = Y(v);
                c.FillRect(cx - barWidth / 2, y, barWidth, bottom - y, _palette[i % _palette.Length]);
                c.DrawTextCentered(cx, y - 20, v.ToString(panel.ValueFormat, CultureInfo.InvariantCulture), 2, Ink);
            }
            else c.DrawTextCentered(cx, bottom - 20, double.IsFinite(v) ? "0" : "-", 2, Ink);
            DrawCategory(c, cx, bottom + 12, categories[i], slot - 4);
        }
    }

    // a category label under its bar: at scale 2 if it fits the slot, else broken after its last '-' or '_' that
    // lets both lines fit at scale 2, else at scale 1
    private static void DrawCategory(Canvas c, int cx, int y, string label, int width)
    {
        if (BitmapFont.MeasureWidth(label, 2) <= width)
        {
            c.DrawTextCentered(cx, y, label, 2, Ink);
            return;
        }
        for (int cut = label.Length - 2; cut > 0; cut--)
        {
            if (label[cut] is not ('-' or '_')) continue;
            string first = label[..(cut + 1)], second = label[(cut + 1)..];
            if (BitmapFont.MeasureWidth(first, 2) > width || BitmapFont.MeasureWidth(second, 2) > width) continue;
            c.DrawTextCentered(cx, y, first, 2, Ink);
            c.DrawTextCentered(cx, y + 18, second, 2, Ink);
            return;
        }
        c.DrawTextCentered(cx, y, label, 1, Ink);
    }

    /// <summary>1, 2 or 5 times a power of ten, at least raw.</summary>
    private static double NiceStep(double raw)
    {
        double p = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        foreach (double m in new[] { 1.0, 2.0, 5.0, 10.0 })
            if (m * p >= raw) return m * p;
        return 10 * p;
    }
}
