using Lckv.Formats;
using Lckv.Model;

namespace Lckv.Tests.LckvSharing;

/// <summary>Layout presets against the examples of kv-sharing.md §2 and the golden fixtures' layer_types.</summary>
public sealed class LayoutsTests
{
    private static string Join(IEnumerable<string> tokens) => string.Join('_', tokens);
    private static string Repeat(int value, int count) => Join(Enumerable.Repeat(value.ToString(), count));

    [Fact]
    public void TwentyTwoLayerExamplesOfTheContract()
    {
        Assert.Equal(Join(Enumerable.Range(0, 22).Select(i => i.ToString())), Layouts.LayerTypes("llama", 22));
        // LCKV w=2 (sandwich-top): 0_20_20_..._20_21
        Assert.Equal("0_" + Repeat(20, 20) + "_21", Layouts.LayerTypes("lckv-w2", 22));
        // LCKV w=10: 0_1_2_3_4_16_..._16_17_18_19_20_21
        Assert.Equal("0_1_2_3_4_" + Repeat(16, 12) + "_17_18_19_20_21", Layouts.LayerTypes("lckv-w10", 22));
        // CLA-2: 0_0_2_2_..._20_20
        Assert.Equal(Join(Enumerable.Range(0, 11).SelectMany(p => new[] { $"{2 * p}", $"{2 * p}" })), Layouts.LayerTypes("cla2", 22));
        // YOCO with a window: 0s_1s_..._10s_11_11_..._11
        Assert.Equal(Join(Enumerable.Range(0, 11).Select(i => $"{i}s")) + "_" + Repeat(11, 11), Layouts.LayerTypes("yoco", 22));
        // sandwich-middle: warmup 1 bottom, 1 top, the 20 middle layers 1..20 read the middle-most (10)
        Assert.Equal("0_" + Repeat(10, 20) + "_21", Layouts.LayerTypes("sandwich-middle", 22));
    }

    [Theory]
    [InlineData("llama", 22)]
    [InlineData("lckv-w2", 3)]   // w+1 KV layers
    [InlineData("lckv-w10", 11)]
    [InlineData("cla2", 11)]
    [InlineData("yoco", 12)]
    [InlineData("sandwich-middle", 3)]
    public void KvLayerCountsFor22Layers(string layout, int kvLayers)
        => Assert.Equal(kvLayers, LayerMap.Parse(Layouts.LayerTypes(layout, 22), 22).KvLayerCount);

    [Theory]
    [InlineData("cla2", 4, "0_0_2_2")]                  // golden cla-2
    [InlineData("yoco", 6, "0s_1s_2s_3_3_3")]           // golden yoco-sliding
    [InlineData("lckv-w2", 6, "0_4_4_4_4_5")]           // golden lckv-sandwich-top-w2
    [InlineData("lckv-w0", 4, "3_3_3_3")]               // golden lckv-all-top
    [InlineData("sandwich-middle", 6, "0_2_2_2_2_5")]   // golden sandwich-middle
    [InlineData("sandwich-middle-w2", 6, "0_2_2_2_2_5")]
    [InlineData("sandwich-middle-w4", 8, "0_1_3_3_3_3_6_7")]
    [InlineData("lckv-w4", 8, "0_1_5_5_5_5_6_7")]
    [InlineData("cla2", 5, "0_0_2_2_4")]
    [InlineData("yoco", 5, "0s_1s_2_2_2")]
    [InlineData("LCKV-W2", 4, "0_2_2_3")]
    [InlineData(" 0_0_2s_2 ", 4, "0_0_2s_2")]           // explicit, passes through
    public void SmallModelsMatchTheGoldenLayouts(string layout, int layers, string expected)
        => Assert.Equal(expected, Layouts.LayerTypes(layout, layers));

    public static TheoryData<string, int> SmallCases()
    {
        var data = new TheoryData<string, int>();
        foreach (var name in new[] { "llama", "lckv-w2", "lckv-w0", "cla2", "yoco", "sandwich-middle" })
            for (int layers = 1; layers <= 8; layers++)
                if (!(layers <= 2 && name is "lckv-w2" or "sandwich-middle")) data.Add(name, layers);
        data.Add("lckv-w4", 8);
        data.Add("lckv-w6", 8);
        data.Add("sandwich-middle-w6", 8);
        return data;
    }

    [Theory]
    [MemberData(nameof(SmallCases))]
    public void EveryLayoutIsValidForSmallModels(string layout, int layers)
    {
        string types = Layouts.LayerTypes(layout, layers);
        var map = LayerMap.Parse(types, layers);
        Assert.Equal(types, map.ToString());
        Assert.Equal(layers, map.LayerCount);
        Assert.True(map.KvLayerCount >= 1);
        // the iteration plan covers every layer exactly once per advancing pass
        var plan = IterationPlan.Build(map, 7, 2);
        Assert.Equal(layers, plan.Where(p => p.Advances).Sum(p => p.End - p.Start));
        // a model with this map can be built
        var cfg = Layouts.ApplyLayout(new ModelConfig
        {
            HiddenSize = 32, IntermediateSize = 48, NumHiddenLayers = layers, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            HeadDim = 8, VocabSize = 64,
        }, layout);
        Assert.Equal(ModelWeights.Specs(cfg, map).Count(s => s.Slot == WeightSlot.K), map.KvLayerCount);
    }

    [Theory]
    [InlineData("lckv-w10", 4, "needs more than 10 layers")]
    [InlineData("lckv-w10", 8, "needs more than 10 layers")]
    [InlineData("lckv-w3", 8, "must be even")]
    [InlineData("lckv-w2", 2, "needs more than 2 layers")]
    [InlineData("mixattention", 8, "unknown layout 'mixattention'")]
    [InlineData("0_1_9_3", 4, "outside [0, 4)")]
    [InlineData("0_1_2", 4, "expected one per layer (4)")]
    [InlineData("", 4, "unknown layout")]
    public void BadLayoutsAreClearErrors(string layout, int layers, string message)
    {
        var e = Assert.Throws<LckvException>(() => Layouts.LayerTypes(layout, layers));
        Assert.Contains(message, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void UnknownLayoutListsTheKnownOnes()
    {
        var e = Assert.Throws<LckvException>(() => Layouts.LayerTypes("sandwich-top", 8));
        foreach (var name in new[] { "llama", "lckv-w2", "lckv-w10", "cla2", "yoco", "sandwich-middle", "layer_types" })
            Assert.Contains(name, e.Message);
    }

    [Fact]
    public void ApplyLayoutSetsTheLckvFields()
    {
        var llama = Presets.Config("tinyllama-1.1b");
        var w2 = Layouts.ApplyLayout(llama, "lckv-w2");
        Assert.Equal(ModelConfig.LckvLlamaType, w2.ModelType);
        Assert.Equal(Layouts.LayerTypes("lckv-w2", 22), w2.LayerTypes);
        Assert.Equal(llama.SlidingWindow, w2.SlidingWindow);
        Assert.Equal(7, w2.ForwardPasses);
        Assert.Equal(2, w2.BackwardPasses);

        var yoco = Layouts.ApplyLayout(llama, "yoco", slidingWindow: 512);
        Assert.Equal(512, yoco.SlidingWindow);

        var back = Layouts.ApplyLayout(w2, "llama");
        Assert.Equal(ModelConfig.LlamaType, back.ModelType);
        Assert.Null(back.LayerTypes);
        Assert.False(back.IsLckv);

        // round trip through config.json
        var parsed = ModelConfig.Parse(w2.ToJson(), "test");
        Assert.Equal(w2.LayerTypes, parsed.LayerTypes);
        Assert.Equal(ModelConfig.LckvLlamaType, parsed.ModelType);
    }
}
