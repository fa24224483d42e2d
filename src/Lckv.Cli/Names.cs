using System.Globalization;
using Lckv.Numerics;

namespace Lckv.Cli;

/// <summary>How the CLI prints what it reports: dtypes as its options spell them (f32, bf16, q8_0), counts in K/M/B.</summary>
public static class Names
{
    /// <summary>A dtype as the options spell it: f32, bf16, q8_0 (KV int8 and q4 likewise).</summary>
    public static string DType(DType t) => KvRows.Name(t);

    /// <summary>A count with three significant digits and a unit: 950, 10.9M, 1.10B.</summary>
    public static string Count(long n)
    {
        double a = Math.Abs((double)n);
        (double div, string unit) = a >= 1e12 ? (1e12, "T") : a >= 1e9 ? (1e9, "B") : a >= 1e6 ? (1e6, "M") : a >= 1e3 ? (1e3, "K") : (1, "");
        if (div == 1) return n.ToString(CultureInfo.InvariantCulture);
        double v = n / div;
        string f = Math.Abs(v) >= 100 ? "F0" : Math.Abs(v) >= 10 ? "F1" : "F2";
        return v.ToString(f, CultureInfo.InvariantCulture) + unit;
    }
}
