using Lckv.Numerics;

namespace Lckv.Tests.Numerics;

[Trait("Category", "Kernels")]
public class GeluMlpTests
{
    // the packed few-row kernel against its scalar definition: rows below, at and past the 4-row tiles, widths that
    // leave 64-, 16- and narrower panels (and the 8-wide tail of the 256-bit path), ranks below and past the 4-output blocks
    [Fact]
    public void MatchesItsReferenceOnOddSizes()
    {
        var rng = new Random(7);
        foreach (int k in new[] { 1, 13, 64 })
            foreach (int hidden in new[] { 1, 9, 16, 37, 64, 100, 152 })
                foreach (int r in new[] { 1, 3, 8, 9 })
                    foreach (int n in new[] { 1, 3, 4, 7, 16, 17 })
                    {
                        var x = TestData.Random(rng, n * k, 2f);
                        var w1 = TestData.Random(rng, k * hidden, 1f / MathF.Sqrt(k));
                        var w2t = TestData.Random(rng, r * hidden, 2f / MathF.Sqrt(hidden));
                        var (y, h) = (new float[n * r], new float[n * hidden]);
                        GeluMlp.ApplyReference(x, n, k, w1, w2t, hidden, r, y, h);
                        var (y2, h2) = (new float[n * r], new float[n * hidden]);
                        // another W1 of the same shape as the one read next: only prefetched, never read for the result
                        var next = GeluMlp.Pack(TestData.Random(rng, k * hidden), k, hidden);
                        GeluMlp.Apply(x, n, k, GeluMlp.Pack(w1, k, hidden), w2t, hidden, r, y2, h2, next);
                        string at = $"n={n} k={k} hidden={hidden} r={r}";
                        for (int i = 0; i < h.Length; i++)
                            Assert.True(Math.Abs(h[i] - h2[i]) <= 2e-5f * Math.Max(1f, Math.Abs(h[i])), $"{at}: h[{i}] = {h2[i]}, reference {h[i]}");
                        for (int i = 0; i < y.Length; i++)
                            Assert.True(Math.Abs(y[i] - y2[i]) <= 2e-5f * Math.Max(1f, Math.Abs(y[i])), $"{at}: y[{i}] = {y2[i]}, reference {y[i]}");
                    }
    }

    [Fact]
    public void PackKeepsEveryWeightAndRejectsShortInput()
    {
        var w = Enumerable.Range(0, 5 * 90).Select(i => (float)i).ToArray();
        var packed = GeluMlp.Pack(w, 5, 90);
        Assert.Equal(w.OrderBy(v => v), packed.OrderBy(v => v));
        // the first panel is 64 columns wide: its second row starts with w[1, 0]
        Assert.Equal(w[90], packed[64]);
        Assert.Throws<ArgumentException>(() => GeluMlp.Pack(w.AsSpan(1), 5, 90));
        Assert.Throws<ArgumentException>(() => GeluMlp.Apply(new float[3], 1, 5, packed, new float[90], 90, 1, new float[1], new float[90]));
    }
}
