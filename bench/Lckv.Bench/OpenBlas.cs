using System.Runtime.InteropServices;

namespace Lckv.Bench;

/// <summary>cblas_sgemm from libopenblas.so.0, when installed (apt-get install -y libopenblas0-pthread).</summary>
internal static unsafe class OpenBlas
{
    private const int RowMajor = 101, NoTrans = 111, Trans = 112;
    private static readonly nint _handle = Load();
    private static readonly delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void> _sgemm =
        _handle == 0 ? null : (delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void>)NativeLibrary.GetExport(_handle, "cblas_sgemm");
    private static readonly delegate* unmanaged<int, void> _setThreads =
        _handle == 0 || !NativeLibrary.TryGetExport(_handle, "openblas_set_num_threads", out var p) ? null : (delegate* unmanaged<int, void>)p;

    public static bool Available => _handle != 0;
    public static string Missing => "OpenBLAS not found (libopenblas.so.0); install it with: apt-get install -y libopenblas0-pthread";

    private static nint Load() => NativeLibrary.TryLoad("libopenblas.so.0", out var h) ? h : 0;

    public static void Threads(int n)
    {
        if (_setThreads != null) _setThreads(n);
    }

    // y (m, n) = x (m, k) · w (n, k)^T, all f32
    public static void Multiply(float* x, float* w, float* y, int m, int k, int n)
        => _sgemm(RowMajor, NoTrans, Trans, m, n, k, 1f, x, k, w, k, 0f, y, n);
}
