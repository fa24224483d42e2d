using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Lckv.Numerics;

namespace Lckv.Tests.Numerics;

[Trait("Category", "Kernels")]
public class ExpTests
{
    // the kernel is 512-bit only (its callers use the library's exp on other hardware): skipped, not passed, elsewhere
    [Vector512Fact]
    public void VectorExpIsWithinTwoUlpOfTheExactValue()
    {
        var xs = Arguments(-90, 90, 0.0137, 40, -30);
        xs.AddRange([0f, -0f, 1e-30f, -1e-30f, 88.7f, -87.3f, 0.34657359f, -0.34657359f]);
        CheckWithinTwoUlp(xs, 16, v => { var e = Simd.Exp(Vector512.Create(v)); return [.. Enumerable.Range(0, 16).Select(i => e[i])]; },
            (x, got) =>
            {
                if (x < -87.34f) { Assert.Equal(0f, got); return true; }
                if (x > 88.73f) { Assert.Equal(float.PositiveInfinity, got); return true; }
                return Math.Exp(x) < 1.2e-38; // subnormal results: absolute error below 1e-38 is enough
            });
        Assert.Equal(1f, Simd.Exp(Vector512<float>.Zero)[0]);
        Assert.Equal(0f, Simd.Exp(Vector512.Create(float.NegativeInfinity))[0]);
        Assert.Equal(float.PositiveInfinity, Simd.Exp(Vector512.Create(float.PositiveInfinity))[0]);
        Assert.True(float.IsNaN(Simd.Exp(Vector512.Create(float.NaN))[0]));
    }

    // the 256-bit exponential of non-positive arguments (the attention softmax on 256-bit hardware)
    [VectorPathFact(256)]
    public void NonPositiveExp256IsWithinTwoUlpOfTheExactValue()
    {
        var xs = Arguments(-90, 0, 0.0071, -30, 0);
        xs.AddRange([0f, -0f, -1e-30f, -87.3f, -0.34657359f, -88f]);
        CheckWithinTwoUlp(xs, 8, v => { var e = Simd.ExpNonPositive(Vector256.Create(v)); return [.. Enumerable.Range(0, 8).Select(i => e[i])]; },
            (x, got) =>
            {
                if (x >= -87.3f) return false;
                Assert.True(got > 0 && got < 2.4e-38f, $"exp({x:R}) = {got:R}"); // 2^-126 times a number below 2
                return true;
            });
        Assert.Equal(1f, Simd.ExpNonPositive(Vector256<float>.Zero)[0]);
        Assert.True(float.IsNaN(Simd.ExpNonPositive(Vector256.Create(float.NaN))[0]));
    }

    // a sweep of [from, to] and 20000 random values from offset to offset + width
    private static List<float> Arguments(double from, double to, double step, double width, double offset)
    {
        var xs = new List<float>();
        for (double x = from; x <= to; x += step) xs.Add((float)x);
        var rng = new Random(21);
        for (int i = 0; i < 20000; i++) xs.Add((float)(rng.NextDouble() * width + offset));
        return xs;
    }

    // exp of every argument, `lanes` at a time, within 2 ulp of Math.Exp; special(x, result) checks a range of its own
    // and returns true where the ulp test does not apply
    private static void CheckWithinTwoUlp(List<float> xs, int lanes, Func<float[], float[]> exp, Func<float, float, bool> special)
    {
        double worst = 0;
        var buf = new float[lanes];
        for (int i = 0; i < xs.Count; i += lanes)
        {
            int n = Math.Min(lanes, xs.Count - i);
            Array.Clear(buf);
            xs.CopyTo(i, buf, 0, n);
            var e = exp(buf);
            for (int j = 0; j < n; j++)
            {
                float x = buf[j], got = e[j];
                if (special(x, got)) continue;
                double exact = Math.Exp(x);
                double ulp = (double)MathF.BitIncrement((float)exact) - (float)exact;
                double err = Math.Abs(got - exact) / Math.Max(ulp, float.Epsilon);
                worst = Math.Max(worst, err);
                Assert.True(err <= 2, $"exp({x:R}) = {got:R}, exact {exact:R} ({err:F2} ulp)");
            }
        }
        Assert.True(worst > 0); // the sweep compared something
    }
}

/// <summary>A test of the 512-bit kernels: skipped where the run has no 512-bit vectors, with the reason in its name,
/// since `dotnet test` prints a skipped test's name but its skip reason only at normal verbosity.</summary>
public sealed class Vector512FactAttribute : FactAttribute
{
    public Vector512FactAttribute([CallerMemberName] string test = "")
    {
        if (VectorPaths.Missing(512) is { } why) (Skip, DisplayName) = (why, $"{test} ({why})");
    }
}

/// <summary>A test that a vector width's kernels ran: skipped, and so listed in the console output with the reason in
/// its name, when this run cannot exercise them.</summary>
public sealed class VectorPathFactAttribute : FactAttribute
{
    public VectorPathFactAttribute(int bits, [CallerMemberName] string test = "")
    {
        if (VectorPaths.Missing(bits) is { } why) (Skip, DisplayName) = (why, $"{test} ({why})");
    }
}

internal static class VectorPaths
{
    /// <summary>Why this run does not exercise the kernels of that width; null when it does.</summary>
    public static string? Missing(int bits)
    {
        bool accelerated = bits == 512 ? Vector512.IsHardwareAccelerated : Vector256.IsHardwareAccelerated;
        if (accelerated) return null;
        string isa = bits == 512 ? "AVX-512" : "AVX2";
        string? off = (bits == 512 ? new[] { "DOTNET_EnableAVX512", "DOTNET_EnableAVX512F", "DOTNET_EnableHWIntrinsic" } : ["DOTNET_EnableAVX2", "DOTNET_EnableHWIntrinsic"])
            .FirstOrDefault(v => Environment.GetEnvironmentVariable(v) == "0");
        string cause = off is not null ? $"{isa} turned off for this run ({off}=0)" : $"no {isa} on this processor";
        return $"{cause}: the {bits}-bit kernels are not exercised in this run";
    }
}

/// <summary>Runs only when CI names the vector path it asked the runtime for (LCKV_EXPECT_PATH = 512, 256 or scalar).</summary>
public sealed class ExpectedPathFactAttribute : FactAttribute
{
    public ExpectedPathFactAttribute()
    {
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable("LCKV_EXPECT_PATH"))) Skip = "LCKV_EXPECT_PATH is not set";
    }
}

[Trait("Category", "Kernels")]
public class VectorPathTests
{
    // the kernel tests are rerun on the 256-bit and scalar paths by switching the runtime's vector support off with
    // environment variables; if a runtime stops honouring one, those runs would silently test the 512-bit path again
    [ExpectedPathFact]
    public void TheRuntimeTookThePathCiAskedFor()
    {
        string expected = Environment.GetEnvironmentVariable("LCKV_EXPECT_PATH")!;
        string actual = Vector512.IsHardwareAccelerated ? "512" : Vector256.IsHardwareAccelerated ? "256" : "scalar";
        Assert.Equal(expected, actual);
    }

    // every kernel test runs on the widest path the run has; these list the paths it does not have in the console output
    [VectorPathFact(512)]
    public void The512BitKernelsAreExercised() => Assert.True(Vector512.IsHardwareAccelerated);

    [VectorPathFact(256)]
    public void The256BitKernelsAreExercised() => Assert.True(Vector256.IsHardwareAccelerated);

    [Fact]
    public void AMissingPathIsNamedWithItsCause()
    {
        foreach (var (bits, accelerated) in new[] { (512, Vector512.IsHardwareAccelerated), (256, Vector256.IsHardwareAccelerated) })
            if (accelerated) Assert.Null(VectorPaths.Missing(bits));
            else Assert.Matches($"^(no AVX[-0-9]+ on this processor|AVX[-0-9]+ turned off for this run \\(DOTNET_\\w+=0\\)): the {bits}-bit kernels are not exercised in this run$", VectorPaths.Missing(bits));
    }
}
