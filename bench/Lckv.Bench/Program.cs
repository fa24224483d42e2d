using BenchmarkDotNet.Running;
using Lckv.Bench;
using Lckv.Diagnostics;
using Lckv.Numerics;

// dotnet run -c Release --project bench/Lckv.Bench -- gemm [square|m1|m16|m64]... [f32|bf16|f16|q8_0|q4_0]... [--threads=N]
// dotnet run -c Release --project bench/Lckv.Bench -- attention [--dtype=f32|bf16|f16]
// dotnet run -c Release --project bench/Lckv.Bench -- roofline
// dotnet run -c Release --project bench/Lckv.Bench -- rope [--rounds=N]
// dotnet run -c Release --project bench/Lckv.Bench -- paths [m1|m4|m16|m128]... [small|tinyllama]... [f32|bf16|f16|q8_0|q4_0]... [--rounds=N]
// dotnet run -c Release --project bench/Lckv.Bench -- [BenchmarkDotNet arguments, e.g. --filter '*Gemm*']
// the kernels use only the cores other processes leave, as in the CLI
WorkerPool.Shared.Cores = CoreMonitor.TryCreate();
if (args.Length > 0 && args[0] == "gemm")
{
    GemmTable.Run(args[1..]);
}
else if (args.Length > 0 && args[0] == "attention")
{
    AttentionTable.Run(args[1..]);
}
else if (args.Length > 0 && args[0] == "paths")
{
    PathTable.Run(args[1..]);
}
else if (args.Length > 0 && args[0] == "rope")
{
    RopeCost.Run(args[1..]);
}
else if (args.Length > 0 && args[0] == "roofline")
{
    for (int t = 1; t <= WorkerPool.Shared.ThreadCount; t++) Console.WriteLine(Roofline.Measure(t));
}
else
{
    BenchmarkSwitcher.FromAssembly(typeof(GemmTable).Assembly).Run(args);
}
